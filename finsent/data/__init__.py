"""Data in: raw files to clean rows (convert, the restricted unpickler), leak-free splits, and reading them back."""
