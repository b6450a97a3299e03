"""Shared facts every layer reads: label set, prompt, model references and cards, params schema, paths, runtime."""
