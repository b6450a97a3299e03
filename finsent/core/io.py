"""File helpers shared by the stages: UTF-8 CSV and JSON in, out."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any, Iterable

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
# How a field that measures time is named here (``seconds``, ``train_seconds``, ``export_s``, ``seconds_per_step``,
# ``posts_per_second``) and in a Trainer's logs (``train_runtime``, ``eval_samples_per_second``).
TIMING_SUFFIXES = ("seconds", "_s", "seconds_per_step", "_runtime", "_per_second")


def is_timing(key: str) -> bool:
    """A field that measures time (its name ends with one of TIMING_SUFFIXES)."""
    return key.endswith(TIMING_SUFFIXES)


def split_timings(report: Any) -> tuple[Any, Any]:
    """``(metrics, timings)``: the report without its timing fields (:func:`is_timing`, at any depth), and those fields alone
    in the same nesting (None when there are none)."""
    if not isinstance(report, dict):
        return report, None
    metrics, timings = {}, {}
    for key, value in report.items():
        if is_timing(key):
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


def headline_path(metrics_path: str | Path) -> Path:
    """metrics/<x>.json -> metrics/headline/<x>.json: the few numbers of a report that DVC compares."""
    path = Path(metrics_path)
    return path.parent / "headline" / path.name


def _leaves(report: Any, keys: tuple[str, ...] = ()):
    if isinstance(report, dict) and report:
        for key, value in report.items():
            yield from _leaves(value, (*keys, str(key)))
    elif keys:
        yield keys, report


def headline(report: dict[str, Any], patterns: Iterable[str]) -> dict[str, Any]:
    """The leaves of ``report`` whose dotted path matches one of ``patterns`` (fnmatch: ``*`` spans dots),
    in the report's nesting. DVC shows no lists, so an interval ``[low, high]`` under a key ending in
    ``_ci`` becomes two numbers, ``<key>_low`` and ``<key>_high``."""
    patterns = list(patterns)
    out: dict[str, Any] = {}
    for keys, value in _leaves(report):
        path = ".".join(keys)  # keys may hold dots themselves (gpt-3.5-turbo): matched joined, rebuilt as keys
        if not any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
            continue
        *parents, key = keys
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
            node[f"{key}_low"], node[f"{key}_high"] = value
        else:
            node[key] = value
    return out


def write_metrics(report: dict[str, Any], path: str | Path, headline_patterns: Iterable[str] | None = None
                  ) -> dict[str, Any]:
    """Write a stage's report to ``path`` (everything but timings: a git-tracked output to read and to
    gate on), its timings (if it has any) to :func:`timing_path` and, with ``headline_patterns``, the
    leaves that match them to :func:`headline_path` (the DVC metric: what `dvc exp show` and
    `dvc metrics diff` compare). Returns the report without its timings."""
    metrics, timings = split_timings(report)
    write_json(metrics, path)
    if timings:
        write_json(timings, timing_path(path))
    if headline_patterns is not None:
        write_json(headline(metrics, headline_patterns), headline_path(path))
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
