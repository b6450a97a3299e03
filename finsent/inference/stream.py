"""`finsent predict`: label a file of posts of any size, streamed in chunks.

    finsent predict --model models/encoder_onnx/int8 posts.parquet -o labelled.parquet
    finsent predict --model models/encoder posts.csv -o labelled.csv --text-column body --keep-columns id

Input and output are CSV, Parquet or JSONL (by extension, ``.gz`` allowed for CSV / JSONL; or
``--input-format`` / ``--output-format``). Rows are read ``chunk_size`` at a time and written as
they are done (to a temporary file renamed at the end), so memory stays flat on any input size.

The output holds, per usable row: ``row`` (the 0-based record number in the input), the kept input
columns (all by default; one whose name clashes with an output column is kept as ``input_<name>``),
``label``, ``p_negative``, ``p_neutral``, ``p_positive`` and ``model``. Rows whose text is missing,
empty or not text are not predicted: each goes to the rejects file (``row``, ``reason``, ``value``)
and is counted in the summary; so is a JSONL line that is not a JSON object.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from finsent.core.labelset import LABELS
from finsent.evaluation.metrics import PROB_COLUMNS, probs_to_labels

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
OUTPUT_COLUMNS = ("row", "label", *PROB_COLUMNS, "model")
REJECT_COLUMNS = ["row", "reason", "value"]


def file_format(path: str | Path, override: str | None = None) -> str:
    """csv, parquet or jsonl: ``override`` if given, else from the extension (before a ``.gz``)."""
    if override:
        if override not in set(FORMATS.values()):
            raise ValueError(f"format {override!r}: use csv, parquet or jsonl")
        return override
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the format from the extension; name it .csv, .parquet or .jsonl "
                         f"(optionally .gz), or pass --input-format / --output-format")
    return fmt


def _open_text(path: Path, mode: str):
    return gzip.open(path, mode + "t", encoding="utf-8", newline="") if path.suffix.lower() == ".gz" \
        else open(path, mode, encoding="utf-8", newline="")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def count_rows(path: str | Path, fmt: str) -> int | None:
    """The number of records when it is cheap to know (Parquet metadata), else None."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError):
            return None  # reading it will say what is wrong, naming the file
    return None


def _jsonl_chunks(path: Path, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[dict[str, Any]]]]:
    """Every non-blank line is a record: a JSON object becomes a row; anything else (invalid JSON,
    bytes that are not UTF-8, ``null``, a list, a number) is rejected with its reason."""
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    bad: list[dict[str, Any]] = []
    with _open_binary(path) as fh:
        row, offset = -1, 0
        for raw in fh:
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue  # blank lines are not records
            row += 1
            try:
                line = raw.decode("utf-8")
                record = json.loads(line)
            except UnicodeDecodeError as exc:
                bad.append({"row": row, "reason": f"not UTF-8 (byte {start + exc.start} of the file)",
                            "value": repr(raw[:200])})
            except json.JSONDecodeError as exc:
                bad.append({"row": row, "reason": f"invalid JSON ({exc.msg})", "value": line.strip()[:200]})
            else:
                if isinstance(record, dict):
                    records.append(record)
                    rows.append(row)
                else:
                    kind = "null" if record is None else type(record).__name__
                    bad.append({"row": row, "reason": f"not a JSON object ({kind})", "value": line.strip()[:200]})
            if row % chunk_size == chunk_size - 1:
                yield pd.DataFrame.from_records(records, index=rows), bad
                records, rows, bad = [], [], []
    if records or bad:
        yield pd.DataFrame.from_records(records, index=rows), bad


def read_chunks(path: str | Path, fmt: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[dict[str, Any]]]]:
    """(frame indexed by record number, rejected records) per chunk of ``chunk_size`` records.
    CSV cells are read as text (an empty cell is an empty string)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such input file")
    try:
        if fmt == "csv":
            start = 0
            try:
                # skip_blank_lines=False: a blank line is a record with an empty text (rejected, counted)
                for frame in pd.read_csv(path, chunksize=chunk_size, dtype=str, keep_default_na=False,
                                         encoding="utf-8", skip_blank_lines=False):
                    frame.index = pd.RangeIndex(start, start + len(frame))
                    start += len(frame)
                    yield frame, []
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: cannot read it as UTF-8 CSV after record {start}: {exc}. Fix or remove "
                                 f"that line (quote fields holding commas or newlines), or convert the file "
                                 f"with `finsent`'s convert stage") from None
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            start = 0
            try:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
                    frame = batch.to_pandas()
                    frame.index = pd.RangeIndex(start, start + len(frame))
                    start += len(frame)
                    yield frame, []
            except (pa.ArrowException, OSError) as exc:
                raise ValueError(f"{path}: not a readable Parquet file after record {start} ({exc}); check that "
                                 f"it was written completely, or pass --input-format for another format") from None
        else:
            yield from _jsonl_chunks(path, chunk_size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: the gzip stream is damaged or cut short ({exc}); re-create or re-download "
                         f"the file") from None


def text_problems(values: pd.Series) -> pd.Series:
    """Per row: why the value cannot be classified ('missing', 'empty', 'not text (<type>)'), or '' if it can."""
    def why(value: Any) -> str:
        if isinstance(value, str):
            return "" if value.strip() else "empty"
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "missing"
        return f"not text ({type(value).__name__})"

    return values.map(why)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

class ChunkWriter:
    """Appends frames to a CSV / Parquet / JSONL file through a temporary file that replaces
    ``path`` only when the writer is closed without an error."""

    def __init__(self, path: str | Path, fmt: str):
        self.path, self.fmt = Path(path), fmt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".part-{self.path.name}")  # same suffixes: .gz stays gzip
        self.rows = 0
        self._header = False
        self._fh = None
        self._parquet = None

    def __enter__(self) -> "ChunkWriter":
        if self.fmt != "parquet":
            self._fh = _open_text(self.tmp, "w")
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self._fh, index=False, header=not self._header, lineterminator="\n")
            self._header = True
        elif self.fmt == "jsonl":
            if len(frame):
                self._fh.write(frame.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n") + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq
            if self._parquet is None:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                self._parquet = pq.ParquetWriter(self.tmp, table.schema)
            else:
                try:
                    table = pa.Table.from_pandas(frame, schema=self._parquet.schema, preserve_index=False)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise ValueError(f"{self.path}: a kept input column changed type between chunks ({exc}); "
                                     f"keep fewer columns (--keep-columns) or write CSV / JSONL") from None
            self._parquet.write_table(table)
        self.rows += len(frame)

    def __exit__(self, exc_type, *exc) -> None:
        if self.fmt == "parquet" and self._parquet is None and exc_type is None:
            self.write(pd.DataFrame({c: pd.Series(dtype="float64" if c.startswith("p_") else "object")
                                     for c in OUTPUT_COLUMNS}).astype({"row": "int64"}))
        if self._parquet is not None:
            self._parquet.close()
        if self._fh is not None:
            self._fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def rejects_path_for(output: str | Path) -> Path:
    """``out.parquet`` -> ``out.rejects.csv`` (next to the output)."""
    output = Path(output)
    stem = output.name
    for suffix in reversed(output.suffixes):
        stem = stem[: -len(suffix)]
    return output.with_name(f"{stem}.rejects.csv")


def check_targets(input_path: str | Path, output_path: str | Path, rejects_path: str | Path | None = None) -> Path:
    """The rejects file's path; refuses an output or rejects file that is the input itself."""
    rejects = Path(rejects_path) if rejects_path else rejects_path_for(output_path)
    for target, flag in ((Path(output_path), "-o/--output"), (rejects, "--rejects")):
        if target.resolve() == Path(input_path).resolve():
            raise ValueError(f"{target}: {flag} is the input file; writing it would destroy the posts. "
                             f"Choose another path")
    return rejects


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def output_frame(chunk: pd.DataFrame, probs: np.ndarray, keep: list[str], model_id: str,
                 files: np.ndarray | None = None) -> pd.DataFrame:
    """The output rows of one chunk: row number, kept columns (renamed on a clash), label, probabilities, model.
    ``files``: each row's input shard, as a leading ``file`` column (the Ray engine reads many shards)."""
    out = pd.DataFrame({"row": chunk.index.to_numpy(dtype=np.int64)})
    reserved = OUTPUT_COLUMNS
    if files is not None:
        out.insert(0, "file", files)
        reserved = ("file", *OUTPUT_COLUMNS)
    for col in keep:
        out[f"input_{col}" if col in reserved else col] = chunk[col].to_numpy()
    out["label"] = probs_to_labels(probs)
    for col, values in zip(PROB_COLUMNS, probs.T):
        out[col] = np.round(values, 6)
    out["model"] = model_id
    return out


class ChunkRules:
    """The one rule set for turning a chunk of input records into rows to classify and rejected records,
    shared by the local engine and the Ray engine (finsent.inference.ray_engine).

    ``keep`` (the input columns copied to the output) is fixed by the first non-empty chunk when not
    given, so every chunk writes the same columns. A JSONL record need not carry every key: once the
    text key was seen, a chunk without it holds 'missing' texts, and absent kept keys are None."""

    def __init__(self, path: str | Path, fmt: str, text_column: str = "text", keep_columns: list[str] | None = None):
        self.path, self.fmt, self.text_column, self.keep = path, fmt, text_column, keep_columns
        self._text_seen = False

    def split(self, chunk: pd.DataFrame, bad: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """(the rows whose text can be classified, every rejected record sorted by record number)."""
        if len(chunk):
            if self.text_column not in chunk.columns:
                if not (self.fmt == "jsonl" and self._text_seen):
                    raise KeyError(f"{self.path}: no column {self.text_column!r} (columns: {list(chunk.columns)}); "
                                   f"name the text column with --text-column")
                chunk = chunk.assign(**{self.text_column: None})  # an earlier chunk had the key: 'missing'
            self._text_seen = True
            if self.keep is None:
                self.keep = list(chunk.columns)
            missing = [c for c in self.keep if c not in chunk.columns]
            if missing:
                if self.fmt != "jsonl":
                    raise KeyError(f"{self.path}: --keep-columns names {missing}, not in the input "
                                   f"(columns: {list(chunk.columns)})")
                chunk = chunk.assign(**{c: None for c in missing})  # JSONL records need not share keys
        problems = text_problems(chunk[self.text_column]) if len(chunk) else pd.Series(dtype=object)
        good = chunk[problems == ""] if len(chunk) else chunk
        rejected = [*bad, *({"row": int(i), "reason": r, "value": repr(chunk.at[i, self.text_column])[:200]}
                            for i, r in problems[problems != ""].items())]
        rejected.sort(key=lambda r: r["row"])
        return good, rejected

    def kept(self, frame: pd.DataFrame) -> list[str]:
        return [c for c in self.keep or [] if c in frame.columns]


def summary(input_path, output_path, rejects_path, model_id: str, reasons: Mapping[str, int],
            labels: Mapping[str, int], seconds: float, truncated: int | None) -> dict[str, Any]:
    """The keys every engine's summary shares: what went in, what was labelled (by label), what was
    rejected (by reason), how fast. ``truncated`` is None where it was not gathered."""
    predicted, rejected = int(sum(labels.values())), int(sum(reasons.values()))
    return {"input": str(input_path), "output": str(output_path), "rejects": str(rejects_path), "model": model_id,
            "rows_in": predicted + rejected, "rows_predicted": predicted, "rows_rejected": rejected,
            "rejected_by_reason": {k: int(v) for k, v in reasons.items()},
            "labels": {lab: int(labels.get(lab, 0)) for lab in LABELS}, "truncated": truncated,
            "seconds": round(seconds, 2), "posts_per_s": round(predicted / seconds, 1) if seconds else None}


def predict_file(classifier, input_path: str | Path, output_path: str | Path, *, text_column: str = "text",
                 keep_columns: list[str] | None = None, chunk_size: int = 4096, rejects_path: str | Path | None = None,
                 model_id: str | None = None, input_format: str | None = None, output_format: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Classify every row of ``input_path`` into ``output_path``; returns the run's summary.
    ``keep_columns``: input columns copied to the output (None: all of them)."""
    fmt_in, fmt_out = file_format(input_path, input_format), file_format(output_path, output_format)
    rejects_path = check_targets(input_path, output_path, rejects_path)
    model_id = model_id or getattr(classifier, "model_id", "model")
    if hasattr(classifier, "progress"):
        classifier.progress = False  # one bar for the whole file instead of one per chunk
    truncated_before = getattr(classifier, "truncated", 0)
    rules = ChunkRules(input_path, fmt_in, text_column, keep_columns)
    reasons: Counter = Counter()
    labels: Counter = Counter()
    rows_in = 0
    rss_first = None
    start = time.perf_counter()
    bar = tqdm(total=count_rows(input_path, fmt_in), unit="post", unit_scale=True, desc="predict",
               disable=not progress, smoothing=0.1)
    with ChunkWriter(output_path, fmt_out) as out, ChunkWriter(rejects_path, "csv") as rejects:
        for chunk, bad in read_chunks(input_path, fmt_in, chunk_size):
            good, rejected = rules.split(chunk, bad)
            probs = classifier.predict_proba(good[text_column].tolist()) if len(good) else np.zeros((0, len(LABELS)))
            frame = output_frame(good, np.asarray(probs, dtype=np.float64), rules.kept(good), model_id)
            out.write(frame)
            rejects.write(pd.DataFrame(rejected, columns=REJECT_COLUMNS))
            reasons.update(r["reason"] for r in rejected)
            labels.update(frame["label"])
            n = len(chunk) + len(bad)
            rows_in += n
            bar.update(n)
            if rss_first is None:
                rss_first = _rss_mb()
    bar.close()
    seconds = time.perf_counter() - start
    if rows_in != out.rows + sum(reasons.values()):   # every record is either labelled or a counted reject
        raise RuntimeError(f"{input_path}: {rows_in} records read, {out.rows} labelled, {sum(reasons.values())} "
                           f"rejected: records went missing")
    return {**summary(input_path, output_path, rejects_path, model_id, reasons, labels, seconds,
                      truncated=getattr(classifier, "truncated", 0) - truncated_before),
            "rss_mb_after_first_chunk": round(rss_first or _rss_mb(), 1), "rss_mb_end": round(_rss_mb(), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
