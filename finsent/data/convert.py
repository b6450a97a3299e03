"""Read raw labelled data in any supported format into one clean, UTF-8 table.

Output columns (data/interim/<dataset>.csv):
    id, text, label, source, dataset, agreement, official_split, file, row
``agreement`` is the Financial PhraseBank annotator-agreement level (0.5, 0.66,
0.75 or 1.0: the strictest file the sentence appears in); it is empty for other
data. ``official_split`` carries a split the data's publisher made (the tweets'
valid file is their test set). ``file``/``row`` point back at the raw record.

Rows that cannot be used are never dropped silently: they come back as rejects
with the file, the record number and the reason.
"""
from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from finsent.core.labelset import LABELS, normalise_label
from finsent.core.schema import Dataset
from finsent.data.safe_pickle import load_dataframe

OUTPUT_COLUMNS = ["id", "text", "label", "source", "dataset", "agreement", "official_split", "file", "row"]
REJECT_COLUMNS = ["dataset", "file", "row", "text", "raw_label", "reason"]
TABULAR_FORMATS = ("csv", "parquet", "jsonl", "pickle")
FORMATS = ("phrasebank",) + TABULAR_FORMATS
HEADLINE = ("*.rejected",)  # what `dvc exp show` compares of the report: the rejected records per dataset


@dataclass
class ConvertResult:
    rows: pd.DataFrame
    rejects: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def clean_text(value: object) -> str | None:
    """Normalise line endings and surrounding space; None for missing or non-text values."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    return text


# ---------------------------------------------------------------------------------------------
# Readers: each returns a Read (a frame with columns text, raw_label, file, row (+ extras), and the
# records it could not read, each with its reason). row = 1-based record number in that file (for
# the PhraseBank and JSONL files it is the line number). Only a file that cannot be read at all
# (missing, not the format, without the text or label column) stops the stage, naming the file.
# ---------------------------------------------------------------------------------------------

class UnreadableFile(ValueError):
    """A whole file cannot be used: the message names the file and the fix."""


@dataclass
class Read:
    rows: pd.DataFrame
    rejects: list[dict[str, Any]] = field(default_factory=list)   # file, row, text, raw_label, reason
    blank_lines: int = 0


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: no such file; fix its path under params.yaml datasets.<name>.files") from None
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot be read ({exc})") from None


def decode_lines(data: bytes, encoding: str) -> tuple[list[str], dict[int, str]]:
    """The file's lines split on ``\\n`` only (str.splitlines would also break on U+0085, which latin-1
    decodes from an ordinary byte), a trailing ``\\r`` removed, and {line number: reason} for the lines
    that do not decode (kept, with U+FFFD in place of the bad bytes, so record numbers stay the same;
    the record holding one becomes a reject with the byte offset)."""
    try:
        lines = data.decode(encoding).split("\n")
        bad: dict[int, str] = {}
    except UnicodeDecodeError:
        lines, bad, offset = [], {}, 0
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                lines.append(raw.decode(encoding))
            except UnicodeDecodeError as exc:
                lines.append(raw.decode(encoding, errors="replace"))
                bad[number] = (f"not valid {encoding} (byte {offset + exc.start} of the file, line {number}; "
                               f"re-save the file as {encoding} or set datasets.<name>.encoding)")
            offset += len(raw) + 1
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if lines and lines[-1] == "":
        lines.pop()
    return lines, bad


def read_phrasebank_file(path: str | Path, encoding: str = "latin-1") -> Read:
    """One ``sentence@label`` file (latin-1, CRLF). Splits on the last '@'."""
    path = Path(path)
    lines, bad_lines = decode_lines(_read_bytes(path), encoding)
    records, bad = [], []
    for lineno, line in enumerate(lines, start=1):
        if lineno in bad_lines:
            bad.append({"file": str(path), "row": lineno, "text": line[:200], "raw_label": None,
                        "reason": bad_lines[lineno]})
            continue
        if "@" in line:
            text, label = line.rsplit("@", 1)
        else:
            text, label = line, None
        records.append({"text": text, "raw_label": label, "file": str(path), "row": lineno,
                        "_no_separator": "@" not in line})
    frame = pd.DataFrame.from_records(records, columns=["text", "raw_label", "file", "row", "_no_separator"])
    return Read(frame, bad)


KEEP = "keep:"  # prefix of the raw columns carried through (datasets.<name>.keep_columns)


def _missing_columns(path: Path, columns: Iterable[str], text_column: str, label_column: str | None,
                     extra: Sequence[str] = ()) -> None:
    columns = list(map(str, columns))
    missing = [c for c in (text_column, label_column, *extra) if c is not None and c not in columns]
    if missing:
        raise UnreadableFile(f"{path}: column(s) {missing} not found (columns are {columns}); "
                             f"set text_column / label_column / keep_columns for this dataset in params.yaml")


def _read_csv(path: Path, encoding: str, text_column: str, label_column: str | None,
              extra: Sequence[str] = ()) -> Read:
    """Python's csv reader, record by record (quoted fields may hold commas and newlines): a record
    with the wrong number of fields, or bad quoting, is a reject; blank lines are counted, not records."""
    lines, bad_lines = decode_lines(_read_bytes(path), encoding)
    bad: list[dict[str, Any]] = []
    text = "\n".join(lines) + "\n"
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise UnreadableFile(f"{path}: no CSV header line; the first line must name the columns") from None
    _missing_columns(path, header, text_column, label_column, extra)
    i_text = header.index(text_column)
    i_label = header.index(label_column) if label_column is not None else None
    i_extra = {c: header.index(c) for c in extra}
    records, record, blank = [], 0, 0
    while True:
        first_line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            record += 1
            where = (f"lines {first_line}-{reader.line_num}" if reader.line_num > first_line else f"line {first_line}")
            bad.append({"file": str(path), "row": record, "text": "", "raw_label": None,
                        "reason": f"unreadable CSV record ({exc}; {where}): quote fields that hold commas, quotes "
                                  f"or line breaks, and close every quote"})
            continue
        if not fields:
            blank += 1
            continue
        record += 1
        undecodable = [bad_lines[n] for n in range(first_line, reader.line_num + 1) if n in bad_lines]
        if undecodable:
            bad.append({"file": str(path), "row": record, "text": ",".join(fields)[:200], "raw_label": None,
                        "reason": undecodable[0]})
            continue
        if len(fields) != len(header):
            bad.append({"file": str(path), "row": record, "text": ",".join(fields)[:200], "raw_label": None,
                        "reason": f"{len(fields)} fields where the header has {len(header)} (line {first_line})"})
            continue
        records.append({"text": fields[i_text], "raw_label": None if i_label is None else fields[i_label],
                        "row": record, **{KEEP + c: fields[i] for c, i in i_extra.items()}})
    frame = pd.DataFrame.from_records(records, columns=["text", "raw_label", "row", *(KEEP + c for c in extra)])
    frame.insert(2, "file", str(path))
    return Read(frame, bad, blank)


def _read_jsonl(path: Path, encoding: str, text_column: str, label_column: str | None,
                extra: Sequence[str] = ()) -> Read:
    """One JSON object per line; a line that is not one (invalid JSON, null, a list, a number) is a reject."""
    lines, bad_lines = decode_lines(_read_bytes(path), encoding)
    records, bad, blank, seen_keys = [], [], 0, set()
    for number, line in enumerate(lines, start=1):
        if number in bad_lines:
            bad.append({"file": str(path), "row": number, "text": line[:200], "raw_label": None,
                        "reason": bad_lines[number]})
            continue
        if not line.strip():
            blank += 1
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append({"file": str(path), "row": number, "text": line[:200], "raw_label": None,
                        "reason": f"invalid JSON ({exc.msg}, line {number})"})
            continue
        if not isinstance(value, dict):
            kind = "null" if value is None else type(value).__name__
            bad.append({"file": str(path), "row": number, "text": line[:200], "raw_label": None,
                        "reason": f"not a JSON object ({kind}, line {number})"})
            continue
        seen_keys |= set(value)
        records.append({"text": value.get(text_column), "row": number,
                        "raw_label": value.get(label_column) if label_column is not None else None,
                        **{KEEP + c: value.get(c) for c in extra}})
    if records:
        _missing_columns(path, seen_keys, text_column, label_column, extra)
    frame = pd.DataFrame.from_records(records, columns=["text", "raw_label", "row", *(KEEP + c for c in extra)])
    frame.insert(2, "file", str(path))
    return Read(frame, bad, blank)


def read_table(path: str | Path, fmt: str, *, encoding: str = "utf-8", text_column: str = "text",
               label_column: str | None = "label", extra: Sequence[str] = ()) -> Read:
    """CSV / Parquet / JSONL / pickled DataFrame -> text, raw_label, file, row, keep:<extra> (+ rejects).
    ``label_column=None``: the file carries no labels (raw_label is None)."""
    path = Path(path)
    if fmt == "csv":
        return _read_csv(path, encoding, text_column, label_column, extra)
    if fmt == "jsonl":
        return _read_jsonl(path, encoding, text_column, label_column, extra)
    if fmt == "parquet":
        _read_bytes(path)[:0]  # a clear message for a missing file
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several kinds for a file that is not Parquet
            raise UnreadableFile(f"{path}: cannot be read as Parquet ({type(exc).__name__}: {exc}); "
                                 f"check the file or its datasets.<name>.format") from None
    elif fmt == "pickle":
        frame = load_dataframe(path)
    else:
        raise UnreadableFile(f"{path}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    _missing_columns(path, frame.columns, text_column, label_column, extra)
    out = pd.DataFrame({
        "text": frame[text_column].astype(object).to_numpy(),
        "raw_label": frame[label_column].astype(object).to_numpy() if label_column is not None else None,
    })
    out["file"] = str(path)
    out["row"] = range(1, len(out) + 1)
    for c in extra:  # datetimes and numbers as text, the way the CSV reader gives them
        out[KEEP + c] = [None if pd.isna(v) else str(v) for v in frame[c]]
    return Read(out)


def assign_agreement(frames: Iterable[tuple[float, pd.DataFrame]]) -> pd.DataFrame:
    """Give every sentence of the loosest PhraseBank file its strictest agreement level.

    The agreement files are nested multisets (AllAgree in 75 in 66 in 50). The k-th
    occurrence of a (text, label) pair in the loosest file gets the highest level whose
    file holds at least k copies of that pair.
    """
    ordered = sorted(frames, key=lambda item: item[0])
    base_level, base = ordered[0]
    counts: dict[float, Counter] = {
        level: Counter(zip(frame["text"], frame["raw_label"])) for level, frame in ordered
    }
    seen: Counter = Counter()
    levels = []
    for key in zip(base["text"], base["raw_label"]):
        k = seen[key]
        seen[key] += 1
        level = base_level
        for lvl, _ in ordered:
            if counts[lvl][key] > k:
                level = lvl
        levels.append(level)
    base = base.copy()
    base["agreement"] = levels
    return base


def validate_rows(frame: pd.DataFrame, dataset: str, source: str, label_map: Mapping[Any, str] | None,
                  keep_columns: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into clean rows and rejects (with a reason each). A row from a file marked
    ``labelled: false`` (column ``_unlabelled``) gets the empty label: a pool post for a teacher."""
    keep_columns = dict(keep_columns or {})
    good, bad = [], []
    known = ", ".join(LABELS)
    for rec in frame.to_dict("records"):
        text = clean_text(rec["text"])
        reason = None
        if rec.get("_no_separator"):
            reason = "no '@label' at the end of the line (expected 'sentence@label')"
        elif text is None:
            reason = f"text is missing or not a string ({type(rec['text']).__name__})"
        elif text == "":
            reason = "empty text"
        unlabelled = bool(rec.get("_unlabelled"))
        label = None if reason else ("" if unlabelled else normalise_label(rec["raw_label"], label_map))
        if reason is None and label is None:
            hint = f"map it in params.yaml datasets.{dataset}.label_map" if label_map else f"expected one of {known}"
            reason = f"unknown label {rec['raw_label']!r} ({hint})"
        if reason:
            bad.append({"dataset": dataset, "file": rec["file"], "row": rec["row"],
                        "text": "" if text is None else text, "raw_label": rec["raw_label"], "reason": reason})
            continue
        stem = Path(rec["file"]).stem
        good.append({
            "id": f"{dataset}-{stem}-{rec['row']}",
            "text": text,
            "label": label,
            "source": source,
            "dataset": dataset,
            "agreement": rec.get("agreement"),
            "official_split": rec.get("official_split") or "",
            "file": rec["file"],
            "row": rec["row"],
            **{out: rec.get(KEEP + raw) for raw, out in keep_columns.items()},
        })
    return (pd.DataFrame.from_records(good, columns=OUTPUT_COLUMNS + list(keep_columns.values())),
            pd.DataFrame.from_records(bad, columns=REJECT_COLUMNS))


def convert_dataset(name: str, spec: Dataset | Mapping[str, Any], root: str | Path = ".") -> ConvertResult:
    """Read every file of one dataset (as described in params.yaml ``datasets.<name>``; a mapping is
    checked against the schema first)."""
    root = Path(root)
    spec = Dataset.model_validate(spec)
    fmt = spec.format
    encoding = spec.encoding or ("latin-1" if fmt == "phrasebank" else "utf-8")
    source = spec.source or name

    unreadable: list[dict[str, Any]] = []   # records the readers could not parse, with their reasons
    blank_lines = 0
    if fmt == "phrasebank":
        levelled = []
        for entry in spec.files:
            read = read_phrasebank_file(root / entry.path, encoding=encoding)
            read.rows["file"] = entry.path
            unreadable += [{**r, "file": entry.path} for r in read.rejects]
            levelled.append((float(entry.agreement), read.rows))
        raw = assign_agreement(levelled)
        raw["official_split"] = ""
    else:
        parts = []
        for entry in spec.files:
            read = read_table(root / entry.path, fmt, encoding=encoding, text_column=spec.text_column,
                              label_column=spec.label_column if entry.labelled else None,
                              extra=list(spec.keep_columns))
            frame = read.rows
            frame["_unlabelled"] = not entry.labelled
            frame["file"] = entry.path
            frame["official_split"] = entry.split
            frame["agreement"] = None
            unreadable += [{**r, "file": entry.path} for r in read.rejects]
            blank_lines += read.blank_lines
            parts.append(frame)
        raw = pd.concat(parts, ignore_index=True)

    if fmt == "phrasebank" and spec.keep_columns:
        raise UnreadableFile(f"datasets.{name}.keep_columns: PhraseBank text files have no columns to keep")
    rows, invalid = validate_rows(raw, name, source, spec.label_map, spec.keep_columns)
    rejects = pd.concat([pd.DataFrame.from_records([{**r, "dataset": name} for r in unreadable], columns=REJECT_COLUMNS),
                         invalid], ignore_index=True) if unreadable else invalid
    reasons = Counter(r.split(" (")[0] for r in rejects["reason"])
    stats = {
        "rows_in": int(len(raw) + len(unreadable)),
        "rows_out": int(len(rows)),
        "rejected": int(len(rejects)),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "blank_lines": blank_lines,
        "labels": {lab: int((rows["label"] == lab).sum()) for lab in LABELS},
    }
    if (rows["label"] == "").any():
        stats["unlabelled"] = int((rows["label"] == "").sum())
    if fmt == "phrasebank":
        stats["agreement"] = {str(k): int(v) for k, v in sorted(Counter(rows["agreement"]).items())}
    if rows["official_split"].astype(bool).any():
        stats["official_split"] = {k or "none": int(v) for k, v in Counter(rows["official_split"]).items()}
    return ConvertResult(rows=rows, rejects=rejects, stats=stats)
