"""A teacher that replays answers a model gave earlier, from a file: real LLM labels, offline.

The forum-posts seed published what 5 models answered (3 Hugging Face classifiers and 2 GPT models on
the 100 human-labelled posts, gpt-4-turbo-preview on 5,000 posts). A ``RecordedTeacher`` looks each
post up by its id or by its normalised text and returns that answer; it never guesses:
- a post the file has no answer for is ``missing`` (counted, with the reason);
- an answer outside the label set (after the explicit ``label_map``, case and spaces folded) is
  ``quarantined`` with the answer in the reason (the seed's one "Sure please");
- a text recorded twice with different answers is ``quarantined`` as ambiguous.
Its id is ``recorded:<model>``, so every report shows that the labels were replayed, not asked for.

In params.yaml it is the teacher kind ``recorded`` (finsent.core.schema.RecordedSpec): a compare
candidate, a label teacher, and an evaluated model (kind ``recorded``).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from finsent.core.labelset import LABELS, normalise_label
from finsent.core.schema import RecordedSpec
from finsent.data.split import normalise_text
from finsent.teachers.answers import Answer
from finsent.teachers.cache import LabelCache

MISSING = "missing"


def read_answers(path: str | Path) -> pd.DataFrame:
    """A CSV / Parquet / JSONL file of recorded answers, every column as text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recorded answers there; fix the teacher's path")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path).astype(str)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True, dtype=False).astype(str)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


class RecordedTeacher:
    """The answers of ``spec.model`` recorded in ``spec.files`` (each a path and the answer column), looked
    up by normalised post text (default) or by id. ``root``: where relative paths start."""

    def __init__(self, spec: RecordedSpec, root: str | Path = "."):
        self.model, self.key, self.label_map = spec.model, spec.key, spec.label_map
        self.price_per_1m_posts = spec.price_per_1m_posts_usd
        answers: dict[str, set[str]] = defaultdict(set)
        for entry in spec.files:
            path = Path(root) / entry.path
            frame = read_answers(path)
            column = spec.text_column if spec.key == "text" else spec.id_column
            for needed in (column, entry.column):
                if needed not in frame.columns:
                    raise ValueError(f"{path}: no column {needed!r} (columns: {list(frame.columns)}); "
                                     f"name the recorded model's column and the {spec.key} column")
            for k, answer in zip(frame[column], frame[entry.column]):
                answers[self._key(k)].add(answer)
        self.answers = dict(answers)
        self.files = [e.path for e in spec.files]
        self.stats = {"requests": 0, "retries": 0}

    @classmethod
    def from_file(cls, model: str, path: str | Path, column: str, **spec: Any) -> "RecordedTeacher":
        return cls(RecordedSpec(model=model, files=[{"path": str(path), "column": column}], **spec))

    @property
    def teacher_id(self) -> str:
        return f"recorded:{self.model}"

    def _key(self, value: Any) -> str:
        return normalise_text(str(value)) if self.key == "text" else str(value).strip()

    def estimate(self, texts: Sequence[str], cache: LabelCache) -> None:
        return None  # replaying costs nothing

    def answer(self, key: Any) -> Answer:
        recorded = self.answers.get(self._key(key))
        if not recorded:
            return Answer(None, MISSING, f"no recorded answer of {self.model} for this post")
        if len(recorded) > 1:
            return Answer(None, "quarantined", f"ambiguous: {self.model} answered {sorted(recorded)} for this text")
        raw = next(iter(recorded))
        label = normalise_label(raw, dict(self.label_map) if self.label_map else None)
        if label is None:
            return Answer(None, "quarantined", f"answer outside the label set: {raw[:80]!r}")
        return Answer(label, "ok", confidence={lab: float(lab == label) for lab in LABELS})

    def label(self, texts: Sequence[str], cache: LabelCache | None, ids: Sequence[Any] | None = None) -> list[Answer]:
        """One answer per post; keyed by ``ids`` when the teacher is keyed by id."""
        if self.key == "id":
            if ids is None:
                raise ValueError(f"recorded teacher {self.model} is keyed by id: pass the posts' ids")
            return [self.answer(i) for i in ids]
        return [self.answer(t) for t in texts]
