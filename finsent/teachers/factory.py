"""Teachers from params: the dataset's own labels, a local model, an OpenAI-compatible endpoint, or
answers a model gave earlier (recorded).

Every teacher has ``teacher_id``, ``stats``, ``label(texts, cache) -> [Answer]`` and
``estimate(texts, cache)`` (the cost of the posts not yet answered; None when it costs nothing).
A new kind of teacher plugs in here (one class, one branch of :func:`make_teacher`) and in the
schema (finsent.core.schema).
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from finsent.core.labelset import LABELS
from finsent.core.schema import LocalSpec, OpenAISpec, Price, RecordedSpec
from finsent.teachers.answers import Answer
from finsent.teachers.cache import LabelCache
from finsent.teachers.cost import price_of
from finsent.teachers.openai_teacher import OpenAITeacher
from finsent.teachers.recorded import RecordedTeacher


class LocalTeacher:
    """Any model reference the project can load (encoder, LoRA adapter, zero-shot embedding)."""

    def __init__(self, spec: LocalSpec):
        from finsent.inference.classifiers import load_classifier

        self.model, self.kind = spec.model, spec.kind
        self.classifier = load_classifier(spec.model, spec.kind, label_map=spec.label_map)
        self.stats = {"requests": 0, "retries": 0}

    @property
    def teacher_id(self) -> str:
        return f"local:{self.kind}:{self.model}"

    def estimate(self, texts: Sequence[str], cache: LabelCache) -> dict[str, Any] | None:
        return None

    def label(self, texts: Sequence[str], cache: LabelCache) -> list[Answer]:
        start = time.perf_counter()
        probs = self.classifier.predict_proba(list(texts)) if len(texts) else np.zeros((0, len(LABELS)))
        per_row = (time.perf_counter() - start) / max(1, len(texts))
        return [Answer(LABELS[int(p.argmax())], "ok", confidence=dict(zip(LABELS, map(float, p))), latency_s=per_row)
                for p in probs]


class GoldTeacher:
    """The dataset's own labels: the offline default, so `dvc repro` needs no key."""

    teacher_id = "gold"

    def __init__(self, gold: Sequence[str]):
        self.gold = list(gold)
        self.stats = {"requests": 0, "retries": 0}

    def estimate(self, texts: Sequence[str], cache: LabelCache) -> dict[str, Any] | None:
        return None

    def label(self, texts: Sequence[str], cache: LabelCache) -> list[Answer]:
        return [Answer(g, "ok", confidence={lab: float(lab == g) for lab in LABELS}) for g in self.gold]


def make_teacher(name: str, spec: LocalSpec | OpenAISpec | RecordedSpec | None, prices: Mapping[str, Price],
                 gold: Sequence[str] | None = None):
    """A teacher from params: ``gold`` (needs ``gold``), ``local``, ``openai`` or ``recorded`` with its spec."""
    if name == "gold":
        if gold is None:
            raise ValueError("the gold teacher needs the pool's gold labels")
        return GoldTeacher(gold)
    if name == "local" and isinstance(spec, LocalSpec):
        return LocalTeacher(spec)
    if name == "openai" and isinstance(spec, OpenAISpec):
        return OpenAITeacher(spec, price=price_of(prices, spec.model))
    if name == "recorded" and isinstance(spec, RecordedSpec):
        return RecordedTeacher(spec)
    raise ValueError(f"params.yaml: teacher {name!r} needs its spec (label.{name}); use gold, local, openai or recorded")
