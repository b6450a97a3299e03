"""`finsent predict --engine ray`: the same predictions on Ray Data, from one machine to a cluster.

    finsent predict --engine ray --model models/encoder_onnx/int8 'posts/*.parquet' -o labelled/
    finsent predict --engine ray --ray-address auto --workers 32 s3://bucket/posts/ -o s3://bucket/labels/  (*)

The input is a file, a directory or a glob of CSV / Parquet / JSONL shards. Each shard is read by a Ray
task with the local engine's reader and rules (finsent.inference.stream: ``read_chunks``,
``ChunkRules``), so the rows classified, the rejected records and their reasons are exactly the local
engine's. The rows go to an actor pool (``map_batches`` with a class: one model load per actor,
``load_classifier`` as everywhere, CPU or GPU actors) and Ray's own writers write the output as shards:

    OUTPUT/labels/*.{parquet,csv,json}   file, row, kept columns, label, p_negative, p_neutral, p_positive, model
    OUTPUT/rejects/*.csv                 file, row, reason, value (only when there are rejects)

``file`` names the input shard (relative to the input directory) and ``row`` the record number in it, the
local engine's columns otherwise. The summary has the local engine's counts (rows in / predicted /
rejected, reasons, labels), read back from what was written, plus the engine's own fields.

Without ``--ray-address`` the command starts a local Ray with one logical CPU per worker thread plus one
for the reading and writing tasks, and stops it at the end. (*) Paths on a cluster must be visible to
every node (shared storage or object store URIs that pyarrow reads); finsent must be installed there.
Ray is an optional dependency: ``pip install 'finsent[ray]'``.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from finsent.core.labelset import LABELS
from finsent.inference.stream import (FORMATS, REJECT_COLUMNS, ChunkRules, file_format, output_frame,
                                      read_chunks, summary)

INSTALL_HINT = "pip install 'finsent[ray]'  (or: pip install -r requirements/ray.txt)"
FILE, ROW = "__file", "__row"   # internal columns between the reading tasks and the actors
IO_TASK_CPUS = 0.5              # logical CPUs of a reading / writing task


def require_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SystemExit(f"finsent predict --engine ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def list_shards(spec: str | Path, input_format: str | None = None) -> tuple[Path, list[Path]]:
    """(the directory shard names are relative to, the shards) for a file, a directory (every CSV /
    Parquet / JSONL file under it, ``.gz`` too, hidden files skipped) or a glob."""
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        base, files = path, [f for f in sorted(path.rglob("*")) if f.is_file()]
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        base = Path(os.path.commonpath([str(f.parent) for f in files])) if files else path.parent
    else:
        raise FileNotFoundError(f"{spec}: no such input file, directory or glob")

    def usable(f: Path) -> bool:
        if any(part.startswith(".") for part in f.relative_to(base).parts):
            return False
        try:
            file_format(f, input_format)
            return True
        except ValueError:
            return False

    shards = [f for f in files if usable(f)]
    if not shards:
        raise FileNotFoundError(f"{spec}: no {', '.join(sorted(set(FORMATS)))} files there (.gz allowed)")
    return base, shards


def _shard_name(shard: Path, base: Path) -> str:
    return shard.relative_to(base).as_posix()


def resolve_keep(shards: list[Path], input_format: str | None, text_column: str, chunk_size: int) -> list[str]:
    """The columns the output keeps when none are named: the first shard's first non-empty chunk's, as locally."""
    for shard in shards:
        fmt = file_format(shard, input_format)
        rules = ChunkRules(shard, fmt, text_column)
        for chunk, bad in read_chunks(shard, fmt, chunk_size):
            rules.split(chunk, bad)
            if rules.keep is not None:
                return rules.keep
    return []


def _read_shards(items: pd.DataFrame, *, want: str, input_format: str | None, text_column: str,
                 keep: list[str], chunk_size: int, kept_as_text: bool) -> Iterator[pd.DataFrame]:
    """A Ray reading task: the shards in ``items`` through the local engine's reader and rules, one frame
    per chunk: the rows to classify (``want='rows'``) or the rejected records (``want='rejects'``).
    ``kept_as_text``: kept columns become text (shards of several formats: CSV cells are text, Parquet
    columns are typed, and every output shard must have one schema)."""
    for path, name in zip(items["path"], items["file"]):
        fmt = file_format(path, input_format)
        rules = ChunkRules(path, fmt, text_column, keep)
        for chunk, bad in read_chunks(path, fmt, chunk_size):
            good, rejected = rules.split(chunk, bad)
            if want == "rejects":
                if rejected:
                    frame = pd.DataFrame(rejected, columns=REJECT_COLUMNS)
                    frame.insert(0, "file", name)
                    yield frame.astype({"row": "int64", "reason": str, "value": str})
            elif len(good):
                cols = list(dict.fromkeys([*rules.kept(good), text_column]))
                frame = good[cols].copy()
                if kept_as_text:
                    frame = frame.astype("string")
                frame.insert(0, ROW, good.index.to_numpy(dtype=np.int64))
                frame.insert(0, FILE, name)
                yield frame.reset_index(drop=True)


def read_dataset(ray, shards: list[Path], base: Path, *, want: str, input_format: str | None, text_column: str,
                 keep: list[str], chunk_size: int, block_rows: int | None = None):
    """The Ray dataset of one pass over the shards (``want``: 'rows' or 'rejects', see _read_shards): a
    reading task per shard. ``block_rows`` cuts the rows into blocks of that many (one actor call each):
    a reading task streams its whole shard as one block, so without the cut every row of a big file went
    to a single actor while the others idled."""
    items = ray.data.from_items([{"path": str(s), "file": _shard_name(s, base)} for s in shards],
                                override_num_blocks=len(shards))
    kept_as_text = len({file_format(s, input_format) for s in shards}) > 1
    ds = items.map_batches(_read_shards, batch_size=1, batch_format="pandas", num_cpus=IO_TASK_CPUS,
                           fn_kwargs=dict(want=want, input_format=input_format, text_column=text_column, keep=keep,
                                          chunk_size=chunk_size, kept_as_text=kept_as_text))
    return ds.repartition(target_num_rows_per_block=block_rows) if block_rows else ds


class Predictor:
    """A Ray actor: loads the model once, then labels batches of rows."""

    def __init__(self, model: str, load: dict[str, Any], threads: int | None, text_column: str, keep: list[str],
                 model_id: str | None):
        from finsent.core.runtime import set_threads
        from finsent.inference.classifiers import load_classifier

        set_threads(threads)
        self.classifier = load_classifier(model, **load)
        if hasattr(self.classifier, "progress"):
            self.classifier.progress = False
        self.text_column, self.keep = text_column, keep
        self.model_id = model_id or getattr(self.classifier, "model_id", "model")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        probs = np.asarray(self.classifier.predict_proba(batch[self.text_column].tolist()), dtype=np.float64)
        rows = batch.set_index(ROW)
        return output_frame(rows, probs, [c for c in self.keep if c in rows.columns], self.model_id,
                            files=batch[FILE].to_numpy())


def _root_cause(exc: BaseException) -> BaseException:
    """The user-facing error inside Ray's wrappers (a reader's KeyError / ValueError names the file)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (KeyError, ValueError, FileNotFoundError)) and type(seen).__module__ == "builtins":
            return seen
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else (seen.__cause__ or seen.__context__)
    return exc


def predict_ray(model: str, inputs: str | Path, output_dir: str | Path, *, load: dict[str, Any] | None = None,
                text_column: str = "text", keep_columns: list[str] | None = None, chunk_size: int = 4096,
                workers: int | None = None, threads_per_worker: int = 1, gpus_per_worker: float = 0.0,
                batch_size: int = 256, input_format: str | None = None, output_format: str = "parquet",
                model_id: str | None = None, address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Label every record of ``inputs`` (file, directory or glob of shards) into ``output_dir`` on Ray;
    returns the summary. ``load``: keyword arguments of ``load_classifier`` (kind, base, batch_size, ...).
    ``batch_size`` here is the rows an actor gets at once (the model batches inside it as usual)."""
    ray = require_ray()
    if output_format not in set(FORMATS.values()):
        raise ValueError(f"output format {output_format!r}: use csv, parquet or jsonl")
    base, shards = list_shards(inputs, input_format)
    out = Path(output_dir)
    for shard in shards:
        if out.resolve() in shard.resolve().parents:
            raise ValueError(f"{out}: -o/--output holds the input shard {shard}; writing there would destroy "
                             f"the posts. Choose another output directory")
    # default: this machine's CPUs (on a cluster, name --workers)
    workers = workers or max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))
    keep = keep_columns if keep_columns is not None else resolve_keep(shards, input_format, text_column, chunk_size)
    labels_dir, rejects_dir = out / "labels", out / "rejects"
    for stale in (labels_dir, rejects_dir):
        shutil.rmtree(stale, ignore_errors=True)

    started_here = not ray.is_initialized()
    if started_here:
        init = {"address": address} if address else {"num_cpus": workers * threads_per_worker + 1}
        ray.init(**init, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True   # rows leave in input order (shard by shard)
    ctx.enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    start = time.perf_counter()
    try:
        rules = dict(input_format=input_format, text_column=text_column, keep=keep, chunk_size=chunk_size)
        rows = read_dataset(ray, shards, base, want="rows", block_rows=batch_size, **rules)
        labelled = rows.map_batches(
            Predictor, batch_size=batch_size, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads_per_worker, num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs=dict(model=model, load=load or {}, threads=threads_per_worker,
                                       text_column=text_column, keep=keep, model_id=model_id))
        writer = {"parquet": "write_parquet", "csv": "write_csv", "jsonl": "write_json"}[output_format]
        getattr(labelled, writer)(str(labels_dir), ray_remote_args={"num_cpus": IO_TASK_CPUS})
        # The rejects depend on the input only: a second, cheap pass over the shards (no model) writes them.
        rejects = read_dataset(ray, shards, base, want="rejects", **rules)
        rejects.write_csv(str(rejects_dir), ray_remote_args={"num_cpus": IO_TASK_CPUS})
        seconds = time.perf_counter() - start
        counts = _read_back(ray, labels_dir, output_format, ["label", "model"])
        reasons = _read_back(ray, rejects_dir, "csv", ["reason"])
    except Exception as exc:
        cause = _root_cause(exc)
        if cause is not exc:
            raise cause from None
        raise
    finally:
        if started_here:
            ray.shutdown()
    by_label = counts.groupby("label")["count()"].sum().to_dict() if len(counts) else {}
    by_reason = reasons.set_index("reason")["count()"].to_dict() if len(reasons) else {}
    model_name = model_id or (counts["model"].iloc[0] if len(counts) else model)
    # truncated: counted inside each actor, not gathered across workers
    return {**summary(inputs, labels_dir, rejects_dir, model_name, by_reason, by_label, seconds, truncated=None),
            "engine": "ray", "shards": len(shards), "workers": workers, "threads_per_worker": threads_per_worker,
            "gpus_per_worker": gpus_per_worker, "ray_address": address or "local"}


def _read_back(ray, directory: Path, fmt: str, columns: list[str]) -> pd.DataFrame:
    """Counts per value of ``columns`` over the shards written to ``directory`` (empty when none were)."""
    if not directory.exists() or not any(p.is_file() and not p.name.startswith(".") for p in directory.rglob("*")):
        return pd.DataFrame(columns=[*columns, "count()"])
    if fmt == "parquet":
        ds = ray.data.read_parquet(str(directory), columns=columns)
    elif fmt == "csv":
        import pyarrow.csv as pcsv
        ds = ray.data.read_csv(str(directory), convert_options=pcsv.ConvertOptions(include_columns=columns))
    else:
        ds = ray.data.read_json(str(directory), lines=True).select_columns(columns)
    return ds.groupby(columns, num_partitions=1).count().to_pandas()  # a handful of keys: no wide shuffle
