"""Evaluation and reports: metrics (one rule each), baselines, every model on every test set, figures."""
