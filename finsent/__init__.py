"""finsent: financial sentiment pipeline (convert, split, train, evaluate)."""
__version__ = "0.1.0"
