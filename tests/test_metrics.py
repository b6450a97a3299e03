"""metrics and baselines: hand-checked numbers, and baselines on real data."""
from __future__ import annotations

import numpy as np
import pytest

from finsent.core.schema import MajorityModel, PredictionsModel, TrainSection
from finsent.data.split import make_split
from finsent.evaluation.baselines import MajorityClassifier, TfidfLogReg
from finsent.evaluation.metrics import compute_metrics, probs_to_labels


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
    parts = make_split(fpb.rows, params.splits["fpb"], seed=42).parts
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
    from finsent.evaluation.evaluate import TestSet, test_sets_for

    sets = [TestSet("fpb", "fpb"), TestSet("tweets", "tweets"), TestSet("bal", "fpb_balanced", models=["llm"])]
    assert [t.name for t in test_sets_for("encoder", MajorityModel(kind="majority"), sets)] == ["fpb", "tweets"]
    llm = PredictionsModel(kind="predictions", path="p", test_sets=["bal", "fpb"])
    assert [t.name for t in test_sets_for("llm", llm, sets)] == ["fpb", "bal"]
    with pytest.raises(ValueError, match="unknown"):
        test_sets_for("llm", PredictionsModel(kind="predictions", path="p", test_sets=["nope"]), sets)


def test_student_report_ratio():
    from finsent.evaluation.evaluate import student_report

    results = {"encoder": {"tweets": {"accuracy": 0.6}}, "majority": {"tweets": {"accuracy": 0.5}}}
    gold = student_report(results, "gold", None)
    assert gold["teacher"] == "gold" and gold["per_test_set"]["tweets"]["student_teacher_ratio"] == 0.6
    label = {"teacher_id": "openai:gpt-4o-mini@x", "agreement_with_gold": {"n": 5000, "accuracy": 0.8}}
    rep = student_report(results, "teacher", label)
    assert rep["per_test_set"]["tweets"]["student_teacher_ratio"] == 0.75 and rep["teacher"] == label["teacher_id"]
    with pytest.raises(ValueError, match="run the label stage"):
        student_report(results, "teacher", None)


def test_training_rows_from_gold_or_teacher(tmp_path):
    import pandas as pd

    from finsent.data.splits import training_rows
    from finsent.core.io import write_csv

    pool = pd.DataFrame({"id": [f"t{i}" for i in range(30)], "text": [f"post {i}" for i in range(30)],
                         "label": ["negative", "neutral", "positive"] * 10, "confidence": 0.9, "teacher": "x"})
    write_csv(pool, tmp_path / "pool.csv")
    rows = training_rows(TrainSection(model="m", hp_set="h", labels="teacher", splits=["fpb"], max_train_rows=12), 0,
                         tmp_path / "pool.csv")
    assert len(rows) == 12 and rows["label"].value_counts().to_dict() == {"negative": 4, "neutral": 4, "positive": 4}
    assert set(rows["id"]) <= set(pool["id"]) and (rows["split"] == "teacher").all()
    with pytest.raises(FileNotFoundError, match="dvc repro label"):
        training_rows(TrainSection(model="m", hp_set="h", labels="teacher", splits=["fpb"]), 0, tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="'gold' or 'teacher'"):
        TrainSection(model="m", hp_set="h", labels="silver", splits=["fpb"])


def test_timings_leave_the_compared_metrics_for_their_own_file(tmp_path):
    """`dvc metrics diff` between two runs of the same code must be empty: what took how long goes to
    metrics/timing/<file> (a plain output), at any depth, and nothing else moves."""
    import json

    from finsent.core.io import timing_path, write_metrics

    report = {"teacher": "gold", "seconds": 1.5, "posts_per_second": 10.0, "per_label": {"neutral": 3},
              "candidates": {"a": {"accuracy": 0.7, "wall_seconds": 2.0}, "b": {"accuracy": 0.6}},
              "train_seconds": 9.0}
    path = tmp_path / "metrics" / "label.json"
    kept = write_metrics(report, path)
    assert json.loads(path.read_text()) == kept == {
        "teacher": "gold", "per_label": {"neutral": 3}, "candidates": {"a": {"accuracy": 0.7}, "b": {"accuracy": 0.6}}}
    assert timing_path(path) == tmp_path / "metrics" / "timing" / "label.json"
    assert json.loads(timing_path(path).read_text()) == {
        "seconds": 1.5, "posts_per_second": 10.0, "candidates": {"a": {"wall_seconds": 2.0}}, "train_seconds": 9.0}


def test_the_headline_is_what_dvc_compares_and_the_report_keeps_everything(tmp_path):
    """write_metrics with headline patterns: the report (every field but timings) at its path, the matching
    leaves at metrics/headline/<file> (the DVC metric), intervals as two numbers; dotted model names work."""
    import json

    from finsent.core.io import headline_path, write_metrics
    from finsent.evaluation.evaluate import headline_patterns

    report = {"gpt-3.5-turbo": {"forum": {"accuracy": 0.53, "macro_f1": 0.5, "macro_f1_ci": [0.4, 0.6],
                                          "weighted_f1": 0.52, "n": 100}},
              "student": {"forum": {"accuracy": 0.61, "macro_f1": 0.6, "macro_f1_ci": [0.5, 0.7], "n": 100}},
              "majority": {"forum": {"accuracy": 0.45, "macro_f1": 0.2, "macro_f1_ci": [0.2, 0.2], "n": 100}}}
    path = tmp_path / "metrics" / "evaluate.json"
    write_metrics({**report, "seconds": 3.0}, path, headline_patterns(["student", "gpt-3.5-turbo"]))
    assert json.loads(path.read_text()) == report
    assert headline_path(path) == tmp_path / "metrics" / "headline" / "evaluate.json"
    assert json.loads(headline_path(path).read_text()) == {
        "gpt-3.5-turbo": {"forum": {"accuracy": 0.53, "macro_f1": 0.5, "macro_f1_ci_low": 0.4, "macro_f1_ci_high": 0.6}},
        "student": {"forum": {"accuracy": 0.61, "macro_f1": 0.6, "macro_f1_ci_low": 0.5, "macro_f1_ci_high": 0.7}}}
    # Without patterns there is no headline file (the stage's DVC metric is elsewhere, e.g. DVCLive's).
    write_metrics(report, tmp_path / "metrics" / "train.json")
    assert not (tmp_path / "metrics" / "headline" / "train.json").exists()
    assert not (tmp_path / "metrics" / "timing" / "train.json").exists()  # no timings, no timing file


def test_trainer_logs_reach_dvclive_under_clear_names_without_timings():
    from finsent.training.common import live_metric_name

    assert live_metric_name("eval_macro_f1") == "eval/macro_f1" and live_metric_name("eval_loss") == "eval/loss"
    assert live_metric_name("loss") == "train/loss" and live_metric_name("train_loss") == "train/mean_loss"
    assert live_metric_name("epoch") == "epoch" and live_metric_name("grad_norm") == "train/grad_norm"
    for timing in ("train_runtime", "eval_runtime", "eval_samples_per_second", "train_steps_per_second", "total_flos"):
        assert live_metric_name(timing) is None, timing


def test_headline_models_must_be_evaluated_models():
    from finsent.core.params import load_params

    params = load_params()
    assert params.evaluate.headline_models == ["encoder", "llm_lora"]
    assert params.workflows["forum"].evaluate.headline_models == ["student"]  # null: the student
    data = params.evaluate.model_dump()
    data["headline"] = ["encoder", "llm_lorra"]
    with pytest.raises(ValueError, match="did you mean 'llm_lora'"):
        type(params.evaluate).model_validate(data)
