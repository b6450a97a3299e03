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
TEACHER_ENCODER_DIR = Path("data/teacher_encoder")  # train_teacher: soft targets + test predictions (git)
SOFT_TARGETS = TEACHER_ENCODER_DIR / "soft_targets.csv"  # its class probabilities on the train rows (distillation)
MODELS_DIR = Path("models")
MODEL_CACHE_DIR = MODELS_DIR / ".cache"  # packaged weights made loadable (unpacked, converted), once per content
PREDICTIONS_DIR = Path("predictions")  # evaluate's predictions per model and test split
RUNS_DIR = Path("runs")
METRICS_DIR = Path("metrics")
PLOTS_DIR = METRICS_DIR / "plots"
LIVE_DIR = METRICS_DIR / "live"        # DVCLive per training stage: metrics.json (DVC metric) + plots/


def workflow_metrics_dir(workflow: str | None) -> Path:
    """metrics/ for the default workflow, metrics/<name>/ for a named one (params.yaml `workflows`); dvc.yaml
    declares each file, so the folders may nest."""
    return METRICS_DIR / workflow if workflow else METRICS_DIR


def workflow_labelled_dir(workflow: str | None) -> Path:
    """data/labelled/ or data/labelled_<name>/ (a sibling: DVC outputs must not nest)."""
    return LABELLED_DIR.with_name(f"{LABELLED_DIR.name}_{workflow}") if workflow else LABELLED_DIR


def workflow_predictions_dir(workflow: str | None) -> Path:
    """predictions/ or predictions_<name>/ (a sibling: DVC outputs must not nest)."""
    return PREDICTIONS_DIR.with_name(f"{PREDICTIONS_DIR.name}_{workflow}") if workflow else PREDICTIONS_DIR


def student_dir(workflow: str) -> Path:
    """Where a named workflow's student model is written."""
    return MODELS_DIR / f"{workflow}_student"
