"""Where things live: the project root and the pipeline's folders (dvc.yaml names the same paths)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("FINSENT_ROOT", Path(__file__).resolve().parents[2]))
PARAMS_FILE = "params.yaml"

# Pipeline locations, relative to the project root.
RAW_DIR = Path("data/raw")
INTERIM_DIR = Path("data/interim")
SPLITS_DIR = Path("data/splits")
LABELLED_DIR = Path("data/labelled")   # the label stage's teacher-labelled pool
MODELS_DIR = Path("models")
RUNS_DIR = Path("runs")
METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"
