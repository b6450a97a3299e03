"""Train a workflow's student on its teacher's labels: a head on frozen features
(finsent.inference.embedding_head, ``kind: embedding_head``) or an encoder fine-tuned end to end by the
encoder trainer (finsent.training.encoder, ``kind: encoder``).

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
from finsent.core.schema import EmbeddingHeadStudent, EncoderStudent, Student
from finsent.evaluation.metrics import probs_to_labels
from finsent.inference.embedding_head import EmbeddingCache, EmbeddingHead, load_embedder

EMBEDDING_CACHE = "embeddings.sqlite"   # under label.cache_dir, next to the teacher's answer cache
# What `dvc exp show` compares of the training report: how well the student fits its teacher's labels
# (an encoder student also on the held-out part of the pool it early-stops on).
HEADLINE = ("train_accuracy_vs_teacher", "val_accuracy_vs_teacher", "val_macro_f1_vs_teacher")


def training_pool(labelled: pd.DataFrame, spec: Student, seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
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


def fit_head(spec: EmbeddingHeadStudent, embedder, texts, labels, embeddings: np.ndarray, seed: int,
             sample_weight: np.ndarray | None = None) -> EmbeddingHead:
    """The head ``spec`` describes, fitted on embedded texts (train_student and the bench/forum_*.py CVs)."""
    return EmbeddingHead.fit(embedder, texts, labels, embeddings=embeddings, tfidf=spec.tfidf,
                             tfidf_max_features=spec.tfidf_max_features, embedding_weight=spec.embedding_weight,
                             C=spec.C, class_weight=spec.class_weight, seed=seed, sample_weight=sample_weight)


def train_student(labelled: pd.DataFrame, spec: Student, out_dir: str | Path, *, seed: int,
                  cache_dir: str | Path | None, teacher: str, runs_dir: str | Path, live_dir: str | Path,
                  work_dir: str | Path, log=print) -> dict[str, Any]:
    """Train the student ``spec`` describes into ``out_dir`` (with its card); returns the report."""
    if isinstance(spec, EncoderStudent):
        return train_encoder_student(labelled, spec, out_dir, seed=seed, teacher=teacher, runs_dir=runs_dir,
                                     live_dir=live_dir, work_dir=work_dir)
    report = train_head_student(labelled, spec, out_dir, seed=seed, cache_dir=cache_dir, teacher=teacher, log=log)
    log_head_fit(report["train_accuracy_vs_teacher"], runs_dir, live_dir)
    return report


def log_head_fit(accuracy: float, runs_dir: str | Path, live_dir: str | Path) -> None:
    """A head student has no curves; its fit to the teacher goes to the same TensorBoard and DVCLive places
    an encoder student's curves go (so the stage's declared outputs exist for either kind)."""
    from dvclive import Live
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(runs_dir)) as writer:
        writer.add_scalar("train/accuracy_vs_teacher", accuracy, 0)
    with Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_metric("train/accuracy_vs_teacher", accuracy)


def _pool_report(teacher: str, rows: pd.DataFrame, left_out: dict[str, int]) -> dict[str, Any]:
    labels = rows["label"].tolist()
    return {"teacher": teacher, "train_rows": len(rows), "left_out": left_out,
            "train_labels": {lab: labels.count(lab) for lab in LABELS}}


def hold_out(rows: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): a seeded split of the teacher-labelled rows, stratified by label."""
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(rows, test_size=fraction, random_state=seed, stratify=rows["label"])
    return train.reset_index(drop=True), val.reset_index(drop=True)


def train_encoder_student(labelled: pd.DataFrame, spec: EncoderStudent, out_dir: str | Path, *, seed: int,
                          teacher: str, runs_dir: str | Path, live_dir: str | Path,
                          work_dir: str | Path) -> dict[str, Any]:
    """Fine-tune ``spec.model`` on the teacher's labels (class-balanced loss if asked), early-stopping on a
    held-out ``val_fraction`` of the pool: its agreement with the teacher there is the report's headline."""
    from finsent.training.encoder import train_encoder

    rows, left_out = training_pool(labelled, spec, seed)
    train, val = hold_out(rows, spec.val_fraction, seed)
    result = train_encoder(train, val, model_ref=spec.model, hp=spec.hp, hp_name="student", out_dir=out_dir,
                           log_dir=runs_dir, live_dir=live_dir, work_dir=work_dir,
                           patience=spec.early_stopping_patience, max_steps=spec.max_steps,
                           class_weight=spec.class_weight)
    summary = result.summary
    return {**_pool_report(teacher, train, left_out), "val_rows": len(val),
            "val_accuracy_vs_teacher": summary["val_accuracy"], "val_macro_f1_vs_teacher": summary["val_macro_f1"],
            **{k: v for k, v in summary.items() if k not in ("val_accuracy", "val_macro_f1", "train_rows", "val_rows")}}


def train_head_student(labelled: pd.DataFrame, spec: EmbeddingHeadStudent, out_dir: str | Path, *, seed: int,
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
        train_pred = np.asarray(probs_to_labels(model.predict_proba(texts, embeddings)))
    finally:
        cache.close()
    model.save(out_dir, model_id=f"{Path(out_dir).name}:{spec.embedder}", teacher=teacher, train_rows=len(rows),
               data_fingerprint=data_fingerprint(texts, labels), C=spec.C, class_weight=spec.class_weight)
    return {**_pool_report(teacher, rows, left_out),
            "train_accuracy_vs_teacher": round(float(np.mean(train_pred == np.asarray(labels))), 4),
            "features": int(model.coef.shape[1]), "embedder": embedder.embedder_id}
