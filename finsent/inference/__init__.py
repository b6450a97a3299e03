"""Running models: one loader for every backend (PyTorch, ONNX Runtime, causal LM), exports, streamed prediction."""
