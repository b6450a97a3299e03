"""File helpers shared by the stages: UTF-8 CSV and JSON in, out."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding="utf-8", lineterminator="\n")


def read_interim(path: str | Path) -> pd.DataFrame:
    """Read a file written by :func:`write_csv` back with the right types."""
    frame = pd.read_csv(path, encoding="utf-8", dtype={"id": str, "text": str, "label": str, "official_split": str},
                        keep_default_na=False, na_values={"agreement": [""]})
    return frame


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")


# Fields that measure how long something took: they change on every run, so they stay out of the DVC
# metrics that `dvc metrics diff` / `dvc exp show` compare, and go to a timing file beside them.
TIMING_FIELDS = frozenset({"seconds", "wall_seconds", "train_seconds", "base_score_seconds", "lora_score_seconds",
                           "seconds_per_step", "train_rows_per_second", "posts_per_second", "export_s", "quantize_s"})


def split_timings(report: Any) -> tuple[Any, Any]:
    """``(metrics, timings)``: the report without its TIMING_FIELDS (at any depth), and those fields alone
    in the same nesting (None when there are none)."""
    if not isinstance(report, dict):
        return report, None
    metrics, timings = {}, {}
    for key, value in report.items():
        if key in TIMING_FIELDS:
            timings[key] = value
            continue
        metrics[key], inner = split_timings(value)
        if inner:
            timings[key] = inner
    return metrics, timings or None


def timing_path(metrics_path: str | Path) -> Path:
    """metrics/<x>.json -> metrics/timing/<x>.json (a plain git-tracked output, not a DVC metric)."""
    path = Path(metrics_path)
    return path.parent / "timing" / path.name


def write_metrics(report: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write a stage's metrics to ``path`` and its timings to :func:`timing_path`; returns the metrics."""
    metrics, timings = split_timings(report)
    write_json(metrics, path)
    write_json(timings or {}, timing_path(path))
    return metrics


class StageClock:
    """Prints a stage's wall time and peak memory when it ends: `with StageClock("train"): ...`."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "StageClock":
        import time

        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import resource
        import time

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"[{self.name}] {time.perf_counter() - self.start:.1f} s, peak RSS {peak_mb:.0f} MB", flush=True)
