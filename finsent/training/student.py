"""Train a workflow's frozen-feature student (finsent.inference.embedding_head) on its teacher's labels.

The stage train_student is argument parsing and file I/O around :func:`train_student`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finsent.core.cards import data_fingerprint
from finsent.core.labelset import LABELS
from finsent.core.schema import StudentSection
from finsent.inference.embedding_head import EmbeddingCache, EmbeddingHead, load_embedder

EMBEDDING_CACHE = "embeddings.sqlite"   # under label.cache_dir, next to the teacher's answer cache
# What `dvc exp show` compares of the training report: how well the head fits its teacher's labels.
HEADLINE = ("train_accuracy_vs_teacher",)


def training_pool(labelled: pd.DataFrame, spec: StudentSection, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """The teacher-labelled rows the student learns from: those at least ``min_confidence`` sure (a
    teacher without confidences, e.g. recorded answers, gives 1.0), then a seeded subset of
    ``max_train_rows``. Returns the rows and what was left out, by reason."""
    conf = (pd.to_numeric(labelled["confidence"], errors="coerce").fillna(1.0) if "confidence" in labelled
            else pd.Series(1.0, index=labelled.index))
    kept = labelled[conf >= spec.min_confidence]
    left_out = {"below_min_confidence": int(len(labelled) - len(kept))}
    if spec.max_train_rows is not None and len(kept) > spec.max_train_rows:
        left_out["over_max_train_rows"] = int(len(kept) - spec.max_train_rows)
        kept = kept.sample(n=spec.max_train_rows, random_state=seed)
    return kept.reset_index(drop=True), left_out


def fit_head(spec: StudentSection, embedder, texts, labels, embeddings: np.ndarray, seed: int) -> EmbeddingHead:
    """The head ``spec`` describes, fitted on embedded texts (train_student and bench/forum_student.py's CV)."""
    return EmbeddingHead.fit(embedder, texts, labels, embeddings=embeddings, tfidf=spec.tfidf,
                             tfidf_max_features=spec.tfidf_max_features, embedding_weight=spec.embedding_weight,
                             C=spec.C, class_weight=spec.class_weight, seed=seed)


def train_student(labelled: pd.DataFrame, spec: StudentSection, out_dir: str | Path, *, seed: int,
                  cache_dir: str | Path | None, teacher: str, log=print) -> dict[str, Any]:
    """Embed (cached), fit the head, save the model directory with its card; returns metrics (no timings:
    those change on every run and are logged instead)."""
    rows, left_out = training_pool(labelled, spec, seed)
    texts, labels = rows["text"].tolist(), rows["label"].tolist()
    cache = EmbeddingCache(Path(cache_dir) / EMBEDDING_CACHE if cache_dir else None)
    try:
        embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
        start = time.perf_counter()
        embeddings = cache.embed(embedder, texts, desc="embed pool")
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        model = fit_head(spec, embedder, texts, labels, embeddings, seed)
        log(f"student: embedded {len(texts)} posts in {embed_s:.1f} s, fit the head in "
            f"{time.perf_counter() - start:.1f} s")
        train_pred = np.asarray(LABELS)[model.predict_proba(texts, embeddings).argmax(axis=1)]
    finally:
        cache.close()
    model.save(out_dir, model_id=f"{Path(out_dir).name}:{spec.embedder}", teacher=teacher, train_rows=len(rows),
               data_fingerprint=data_fingerprint(texts, labels), C=spec.C, class_weight=spec.class_weight)
    return {"teacher": teacher, "train_rows": len(rows), "left_out": left_out,
            "train_labels": {lab: labels.count(lab) for lab in LABELS},
            "train_accuracy_vs_teacher": round(float(np.mean(train_pred == np.asarray(labels))), 4),
            "features": int(model.coef.shape[1]), "embedder": embedder.embedder_id}
