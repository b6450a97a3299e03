"""Tools about the pipeline itself: the CI metric gate and the dvc.yaml code-deps check."""
