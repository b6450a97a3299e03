"""Reading the split stage's outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from finsent.core.io import read_interim
from finsent.core.paths import LABELLED_DIR, SPLITS_DIR
from finsent.core.schema import TrainSection


def split_path(split: str, part: str, root: str | Path = SPLITS_DIR) -> Path:
    return Path(root) / split / f"{part}.csv"


def load_split(split: str, part: str, root: str | Path = SPLITS_DIR) -> pd.DataFrame:
    path = split_path(split, part, root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: split '{split}' part '{part}' not found; run `dvc repro split` "
                                f"and check that '{split}' is defined under params.yaml splits")
    return read_interim(path)


def load_split_union(splits: Sequence[str], part: str, root: str | Path = SPLITS_DIR) -> pd.DataFrame:
    """Concatenate one part (train/val/test) of several splits, keeping a ``split`` column."""
    frames = [load_split(name, part, root).assign(split=name) for name in splits]
    return pd.concat(frames, ignore_index=True)


def test_rows(split: str, max_rows: int | None, seed: int, root: str | Path = SPLITS_DIR) -> pd.DataFrame:
    """The test rows a model is scored on (``evaluate.max_rows``, seeded): evaluate and the LLM stage
    (which scores its own predictions for evaluate) both take them from here."""
    return sample_rows(load_split(split, "test", root), max_rows, seed)


def training_rows(train_cfg: TrainSection, seed: int, pool: str | Path = LABELLED_DIR / "pool.csv") -> pd.DataFrame:
    """The rows the encoder and the baselines learn from. ``train.labels: gold`` (default): the train
    parts of ``train.splits`` with their own labels; ``teacher``: the pool the label stage labelled
    with its teacher (the student setting). Sampled to ``train.max_train_rows`` either way."""
    if train_cfg.labels == "gold":
        frame = load_split_union(train_cfg.splits, "train")
    else:  # teacher
        if not Path(pool).exists():
            raise FileNotFoundError(f"{pool}: no teacher-labelled pool; run `dvc repro label` first")
        frame = read_interim(pool)[["id", "text", "label"]].assign(split="teacher")
    return sample_rows(frame, train_cfg.max_train_rows, seed)


def validation_rows(train_cfg: TrainSection, seed: int, root: str | Path = SPLITS_DIR) -> pd.DataFrame:
    """The gold rows an encoder is selected on (early stopping, the kept checkpoint): the val parts of
    ``train.splits``, sampled to ``train.max_val_rows``, whatever ``train.labels`` says."""
    return sample_rows(load_split_union(train_cfg.splits, "val", root), train_cfg.max_val_rows, seed)


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """Exactly ``n`` rows, stratified by label (largest-remainder shares), seeded; all rows when n is None."""
    if not n or n >= len(frame):
        return frame
    counts = frame["label"].value_counts().sort_index()
    exact = counts / counts.sum() * n
    take = np.floor(exact).astype(int)
    remainder = (exact - take).sort_values(ascending=False, kind="stable")
    take[remainder.index[: n - int(take.sum())]] += 1
    parts = [frame[frame["label"] == label].sample(n=int(k), random_state=seed) for label, k in take.items()]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
