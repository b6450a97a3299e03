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
