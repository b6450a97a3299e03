"""A causal LM scored on the test rows evaluate reads, written as evaluate's ``predictions`` files.

Two stages score a causal LM: ``score_llm_base`` the base model zero-shot (before), ``train_llm`` the
LoRA-tuned one (after). Both take their rows from :func:`llm_test_rows` and write through
:func:`score_to_predictions`, so the two sides of "before and after" are the same rows, scored the same way.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from finsent.core.io import write_csv
from finsent.core.paths import SPLITS_DIR
from finsent.data.splits import test_rows
from finsent.evaluation.metrics import compute_metrics, prediction_frame, probs_to_labels
from finsent.inference.causal_lm import score_frames


def llm_test_rows(eval_splits: list[str], max_rows: int | None, seed: int,
                  root: str | Path = SPLITS_DIR) -> dict[str, pd.DataFrame]:
    """Per split of ``llm.eval_splits``: the rows evaluate scores (``evaluate.max_rows``, seeded)."""
    return {split: test_rows(split, max_rows, seed, root) for split in eval_splits}


def score_to_predictions(model, tokenizer, tests: dict[str, pd.DataFrame], *, name: str, out_dir: str | Path,
                         batch_size: int) -> dict[str, float]:
    """Score every test split with ``model``, write ``<out_dir>/<split>.csv`` (evaluate's ``predictions``
    kind, model column ``llm_<name>``) and return the run's figures: ``<name>_score_seconds`` (a timing)
    and ``<name>_accuracy_<split>`` per split."""
    start = time.perf_counter()
    scored = score_frames(model, tokenizer, tests, batch_size=batch_size, desc=f"score {name}")
    report: dict[str, float] = {f"{name}_score_seconds": round(time.perf_counter() - start, 1)}
    for split, frame in tests.items():
        write_csv(prediction_frame(frame, scored[split], f"llm_{name}"), Path(out_dir) / f"{split}.csv")
        acc = compute_metrics(frame["label"], probs_to_labels(scored[split]))["accuracy"]
        report[f"{name}_accuracy_{split}"] = acc
        print(f"{name}: accuracy on {split} test ({len(frame)} rows): {acc:.4f}")
    return report
