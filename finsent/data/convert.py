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

import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from finsent.core.labelset import LABELS, normalise_label
from finsent.core.schema import Dataset
from finsent.data.safe_pickle import load_dataframe

OUTPUT_COLUMNS = ["id", "text", "label", "source", "dataset", "agreement", "official_split", "file", "row"]
REJECT_COLUMNS = ["dataset", "file", "row", "text", "raw_label", "reason"]
TABULAR_FORMATS = ("csv", "parquet", "jsonl", "pickle")
FORMATS = ("phrasebank",) + TABULAR_FORMATS


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
# Readers: each returns a frame with columns text, raw_label, file, row (+ extras), row = 1-based
# record number in that file (for the PhraseBank files it is the line number).
# ---------------------------------------------------------------------------------------------

def read_phrasebank_file(path: str | Path, encoding: str = "latin-1") -> pd.DataFrame:
    """One ``sentence@label`` file (latin-1, CRLF). Splits on the last '@'."""
    path = Path(path)
    data = path.read_bytes().decode(encoding)
    # Split on newlines only: str.splitlines() would also break on U+0085 and friends,
    # which latin-1 decodes from ordinary bytes.
    lines = [line[:-1] if line.endswith("\r") else line for line in data.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    records = []
    for lineno, line in enumerate(lines, start=1):
        if "@" in line:
            text, label = line.rsplit("@", 1)
        else:
            text, label = line, None
        records.append({"text": text, "raw_label": label, "file": str(path), "row": lineno,
                        "_no_separator": "@" not in line})
    return pd.DataFrame.from_records(records, columns=["text", "raw_label", "file", "row", "_no_separator"])


def read_table(path: str | Path, fmt: str, *, encoding: str = "utf-8", text_column: str = "text",
               label_column: str = "label") -> pd.DataFrame:
    """CSV / Parquet / JSONL / pickled DataFrame -> text, raw_label, file, row."""
    path = Path(path)
    if fmt == "csv":
        frame = pd.read_csv(path, encoding=encoding, dtype=object, keep_default_na=False)
    elif fmt == "parquet":
        frame = pd.read_parquet(path)
    elif fmt == "jsonl":
        frame = pd.read_json(path, lines=True, dtype=False, encoding=encoding)
    elif fmt == "pickle":
        frame = load_dataframe(path)
    else:
        raise ValueError(f"{path}: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: column(s) {missing} not found (columns are {list(map(str, frame.columns))}); "
            f"set text_column / label_column for this dataset in params.yaml")
    out = pd.DataFrame({
        "text": frame[text_column].astype(object).to_numpy(),
        "raw_label": frame[label_column].astype(object).to_numpy(),
    })
    out["file"] = str(path)
    out["row"] = range(1, len(out) + 1)
    return out


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


def validate_rows(frame: pd.DataFrame, dataset: str, source: str,
                  label_map: Mapping[Any, str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into clean rows and rejects (with a reason each)."""
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
        label = None if reason else normalise_label(rec["raw_label"], label_map)
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
        })
    return (pd.DataFrame.from_records(good, columns=OUTPUT_COLUMNS),
            pd.DataFrame.from_records(bad, columns=REJECT_COLUMNS))


def convert_dataset(name: str, spec: Dataset | Mapping[str, Any], root: str | Path = ".") -> ConvertResult:
    """Read every file of one dataset (as described in params.yaml ``datasets.<name>``; a mapping is
    checked against the schema first)."""
    root = Path(root)
    spec = Dataset.model_validate(spec)
    fmt = spec.format
    encoding = spec.encoding or ("latin-1" if fmt == "phrasebank" else "utf-8")
    source = spec.source or name

    if fmt == "phrasebank":
        levelled = []
        for entry in spec.files:
            frame = read_phrasebank_file(root / entry.path, encoding=encoding)
            frame["file"] = entry.path
            levelled.append((float(entry.agreement), frame))
        raw = assign_agreement(levelled)
        raw["official_split"] = ""
    else:
        parts = []
        for entry in spec.files:
            frame = read_table(root / entry.path, fmt, encoding=encoding, text_column=spec.text_column,
                               label_column=spec.label_column)
            frame["file"] = entry.path
            frame["official_split"] = entry.split
            frame["agreement"] = None
            parts.append(frame)
        raw = pd.concat(parts, ignore_index=True)

    rows, rejects = validate_rows(raw, name, source, spec.label_map)
    reasons = Counter(r.split(" (")[0] for r in rejects["reason"])
    stats = {
        "rows_in": int(len(raw)),
        "rows_out": int(len(rows)),
        "rejected": int(len(rejects)),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "labels": {lab: int((rows["label"] == lab).sum()) for lab in LABELS},
    }
    if fmt == "phrasebank":
        stats["agreement"] = {str(k): int(v) for k, v in sorted(Counter(rows["agreement"]).items())}
    if rows["official_split"].astype(bool).any():
        stats["official_split"] = {k or "none": int(v) for k, v in Counter(rows["official_split"]).items()}
    return ConvertResult(rows=rows, rejects=rejects, stats=stats)
