"""Classification metrics, computed one way for every model and every test set."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support

from finsent.core.labelset import LABELS


def _r(x: float) -> float:
    return round(float(x), 4)


def accuracy_and_macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """The two headline numbers, unrounded (what the Trainer's early stopping watches)."""
    labels = list(LABELS)
    _, _, f, _ = precision_recall_fscore_support(list(y_true), list(y_pred), labels=labels, average="macro",
                                                 zero_division=0)
    return {"accuracy": float(accuracy_score(list(y_true), list(y_pred))), "macro_f1": float(f)}


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, P/R/F1 (per class, macro, weighted), per-class accuracy, confusion matrix, report.

    Per-class accuracy is the share of rows *of that class* predicted correctly (what the
    Phi-2 / Llama-2 notebooks print), which equals the class recall.
    """
    labels = list(LABELS)
    y_true, y_pred = list(y_true), list(y_pred)
    unknown = sorted({*y_true, *y_pred} - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not in {labels}")
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {"n": len(y_true), "accuracy": _r(accuracy_and_macro_f1(y_true, y_pred)["accuracy"])}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"{avg}_precision": _r(ap), f"{avg}_recall": _r(ar), f"{avg}_f1": _r(af)})
    out["per_class"] = {
        lab: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "accuracy": _r(r[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": labels,
                               "matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()}
    out["report"] = classification_report(y_true, y_pred, labels=labels, digits=4, zero_division=0)
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics worth a column in `dvc metrics show` / `dvc exp show`."""
    keys = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "n", "accuracy_ci", "macro_f1_ci")
    return {k: metrics[k] for k in keys if k in metrics}


def probs_to_labels(probs: np.ndarray) -> list[str]:
    return [LABELS[i] for i in np.asarray(probs).argmax(axis=1)]


PROB_COLUMNS = [f"p_{lab}" for lab in LABELS]


def prediction_frame(frame: pd.DataFrame, probs: np.ndarray, model: str) -> pd.DataFrame:
    """The predictions file every model writes: id, text, label, pred, p_<label> per class, model."""
    out = frame[["id", "text", "label"]].copy()
    out["pred"] = probs_to_labels(probs)
    for col, values in zip(PROB_COLUMNS, np.asarray(probs).T):
        out[col] = np.round(values, 5)
    out["model"] = model
    return out


def test_names(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every test set any model in ``results[model][test_set]`` was scored on, in first-seen order."""
    return list(dict.fromkeys(t for per_test in results.values() for t in per_test))


def agreement(reference: Sequence[str | None], candidate: Sequence[str | None]) -> dict[str, Any]:
    """How far two labellings agree, on the rows where both gave a label: n, the share of equal labels
    (``accuracy`` when ``reference`` is gold), macro-F1, Cohen's kappa and the confusion matrix. The one
    agreement rule: teacher vs gold (label stage), a faster backend vs its reference (evaluate, export)."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [(r, c) for r, c in zip(reference, candidate) if r is not None and c is not None]
    if not pairs:
        return {"n": 0}
    y, p = zip(*pairs)
    m = compute_metrics(y, p)
    kappa = cohen_kappa_score(y, p, labels=list(LABELS)) if len(set(y) | set(p)) > 1 else 1.0
    return {"n": len(pairs), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "cohen_kappa": round(float(kappa), 4), "confusion_matrix": m["confusion_matrix"]}


def coverage_table(gold: Sequence[str | None], labels: Sequence[str | None], confidence: Sequence[float | None],
                   thresholds: Sequence[float] = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> list[dict]:
    """Keep only answers whose top-label confidence reaches a threshold: coverage (share of all posts kept)
    and accuracy against gold over the kept posts that have gold (None for a pool without gold)."""
    rows = []
    answered = [(conf, None if g is None else lab == g) for g, lab, conf in zip(gold, labels, confidence)
                if lab and conf is not None]
    for t in thresholds:
        kept = [ok for conf, ok in answered if conf >= t]
        scored = [ok for ok in kept if ok is not None]
        rows.append({"threshold": t, "coverage": round(len(kept) / max(1, len(labels)), 4),
                     "accuracy": round(float(np.mean(scored)), 4) if scored else None, "rows": len(kept)})
    return rows


def bootstrap_intervals(y_true: Sequence[str], y_pred: Sequence[str | None], resamples: int = 1000,
                        seed: int = 42, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals of accuracy and macro-F1: the test rows resampled with replacement
    ``resamples`` times (seeded). A prediction outside the label set (None: no answer) counts as wrong.
    On a small test set (the forum's 100 posts) these intervals are wide: report them with the numbers."""
    index = {lab: i for i, lab in enumerate(LABELS)}
    t = np.array([index[y] for y in y_true])
    p = np.array([index.get(y, -1) if y is not None else -1 for y in y_pred])
    n, k = len(t), len(LABELS)
    if n == 0 or resamples <= 0:
        return {"resamples": 0}
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    tt, pp = t[rows], p[rows]
    correct = tt == pp
    acc = correct.mean(axis=1)
    f1s = []
    for c in range(k):
        tp = (correct & (tt == c)).sum(axis=1)
        fp = ((pp == c) & (tt != c)).sum(axis=1)
        fn = ((tt == c) & (pp != c)).sum(axis=1)
        denom = 2 * tp + fp + fn
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    macro = np.mean(f1s, axis=0)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {"resamples": int(resamples), "level": level,
            "accuracy_ci": [_r(np.percentile(acc, lo)), _r(np.percentile(acc, hi))],
            "macro_f1_ci": [_r(np.percentile(macro, lo)), _r(np.percentile(macro, hi))]}
