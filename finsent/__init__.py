"""finsent: financial sentiment pipeline (convert, split, train, evaluate, label, serve).

The layers are subpackages (see ARCHITECTURE.md): ``core``, ``data``, ``training``, ``inference``,
``teachers``, ``evaluation``, ``serving``, ``pipeline``. Any model the project writes (or a hub,
local or packaged one) runs through ``finsent.inference.classifiers.load_classifier``.
"""
__version__ = "0.1.0"
