"""metrics and baselines: hand-checked numbers, and baselines on real data."""
from __future__ import annotations

import numpy as np
import pytest

from finsent.baselines import MajorityClassifier, TfidfLogReg
from finsent.metrics import compute_metrics, probs_to_labels
from finsent.split import make_split


def test_metrics_by_hand():
    y = ["negative", "negative", "neutral", "neutral", "positive", "positive"]
    p = ["negative", "neutral", "neutral", "neutral", "positive", "negative"]
    m = compute_metrics(y, p)
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    # negative: P 1/2 R 1/2; neutral: P 2/3 R 1; positive: P 1 R 1/2
    assert m["per_class"]["neutral"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "accuracy": 1.0, "support": 2}
    f1s = [0.5, 0.8, 2 / 3]
    assert m["macro_f1"] == pytest.approx(np.mean(f1s), abs=1e-4)
    assert m["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert "macro avg" in m["report"]
    with pytest.raises(ValueError, match="bearish"):
        compute_metrics(["bearish"], ["neutral"])


def test_baselines_on_real_fpb(fpb, params):
    parts = make_split(fpb.rows, params["splits"]["fpb"], seed=42).parts
    train, test = parts["train"], parts["test"]
    maj = MajorityClassifier().fit(train["text"], train["label"])
    tfidf = TfidfLogReg().fit(train["text"], train["label"])
    m_maj = compute_metrics(test["label"], probs_to_labels(maj.predict_proba(test["text"])))
    probs = tfidf.predict_proba(test["text"])
    m_tfidf = compute_metrics(test["label"], probs_to_labels(probs))
    assert np.allclose(probs.sum(axis=1), 1)
    assert m_maj["accuracy"] == pytest.approx(575 / 968, abs=0.01) and m_maj["macro_f1"] < 0.3
    assert m_tfidf["macro_f1"] > 0.65 and m_tfidf["accuracy"] > 0.75


def test_test_sets_for_respects_both_filters():
    from finsent.evaluate import TestSet, test_sets_for

    sets = [TestSet("fpb", "fpb"), TestSet("tweets", "tweets"), TestSet("bal", "fpb_balanced", models=["llm"])]
    assert [t.name for t in test_sets_for("encoder", {}, sets)] == ["fpb", "tweets"]
    assert [t.name for t in test_sets_for("llm", {"test_sets": ["bal", "fpb"]}, sets)] == ["fpb", "bal"]
    with pytest.raises(ValueError, match="unknown"):
        test_sets_for("llm", {"test_sets": ["nope"]}, sets)
