"""Parameters and paths: one place that knows where things live and how params.yaml is read."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

ROOT = Path(os.environ.get("FINSENT_ROOT", Path(__file__).resolve().parent.parent))
PARAMS_FILE = "params.yaml"

# Pipeline locations, relative to the project root (dvc.yaml names the same paths).
RAW_DIR = Path("data/raw")
INTERIM_DIR = Path("data/interim")
SPLITS_DIR = Path("data/splits")
LABELLED_DIR = Path("data/labelled")   # the label stage's teacher-labelled pool
MODELS_DIR = Path("models")
RUNS_DIR = Path("runs")
METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml (or another file) into a dict; a clear error if it is missing or malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            params = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: parameter file not found; run from the project root or pass --params") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc}); fix the syntax at the position shown") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(params).__name__}")
    return params


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins; mappings merge)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dump_params(params: Mapping[str, Any], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        yaml.safe_dump(dict(params), fh, sort_keys=False, allow_unicode=True)


def require(params: Mapping[str, Any], dotted: str) -> Any:
    """Fetch ``a.b.c`` from params, failing with the key's full name when it is absent."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"params.yaml: missing key '{dotted}' (add it, see the README's parameter table)")
        node = node[part]
    return node


def hp_set(params: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The named hyperparameter set chosen by ``train.hp_set`` (or ``name``)."""
    name = name or require(params, "train.hp_set")
    sets = require(params, "hp_sets")
    if name not in sets:
        raise KeyError(f"params.yaml: train.hp_set='{name}' is not one of hp_sets: {', '.join(sets)}")
    return dict(sets[name])
