"""Classic baselines that every fine-tuned model must beat: majority class and TF-IDF + logistic regression.

All classifiers in finsent share one interface: ``predict_proba(texts) -> (n, 3)`` array whose
columns follow ``LABELS``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from finsent.core.labelset import LABEL2ID, LABELS


class MajorityClassifier:
    """Always the most frequent training label; probabilities are the training class shares."""

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> "MajorityClassifier":
        counts = np.bincount([LABEL2ID[lab] for lab in labels], minlength=len(LABELS)).astype(float)
        self.prior = counts / counts.sum()
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(self.prior, (len(texts), 1))


class TfidfLogReg:
    """TF-IDF (sublinear tf; word 1-2-grams by default, or char_wb n-grams for morphology-rich text such as
    German) + multinomial logistic regression, optionally class-balanced."""

    def __init__(self, C: float = 4.0, ngram_range: tuple[int, int] = (1, 2), min_df: int = 1, seed: int = 42,
                 analyzer: str = "word", class_weight: str | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(
            TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(ngram_range), min_df=min_df, sublinear_tf=True,
                            lowercase=True),
            LogisticRegression(C=C, max_iter=2000, random_state=seed, class_weight=class_weight),
        )

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> "TfidfLogReg":
        self.pipeline.fit(list(texts), list(labels))
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        probs = self.pipeline.predict_proba(list(texts))
        order = [list(self.pipeline.classes_).index(lab) for lab in LABELS]
        return probs[:, order]
