"""Evaluate every model on every test set and write metrics, reports, plot data and figures.

Models come from params.yaml ``evaluate.models``; each has a ``kind``:
- ``majority`` / ``tfidf``: baselines fitted here on the same training rows as the encoder;
- ``zeroshot_embedding``: the base encoder before fine-tuning (cosine to label descriptions);
- ``encoder``: a sequence classifier directory or model reference (the fine-tuned model), in
  PyTorch at ``dtype`` (float32 unless given);
- ``onnx``: an ONNX Runtime export of it (the export stage's fp32 and int8 directories);
- ``embedding_head``: a frozen-feature student directory (finsent.inference.embedding_head);
- ``predictions``: a directory of ``<test split>.csv`` files with p_<label> columns written by
  another stage (for models too costly to run here);
- ``recorded``: answers a model gave earlier, replayed from files (finsent.teachers.recorded): the
  forum seed's GPT and Hugging Face models, and its own fine-tuned model. Every test post must have
  a valid recorded answer (else an error names how many do not).
Every model and test set gets a seeded bootstrap 95% interval for accuracy and macro-F1.
Test sets are ``split`` test parts, optionally filtered (``min_agreement`` for FPB's AllAgree).
A model with ``reference: <model>`` is another way to run that model (a lower precision, another
runtime): :func:`backend_report` puts its macro-F1 change and label agreement next to the reference's.
A model's own ``max_rows`` scores it on a stratified sample of each test split (bfloat16 on a CPU
that only emulates it, such as an AVX2-only one, runs 7.5x slower than float32): its backend comparison
covers the same rows of the reference, and the summary shows the sample's size.
"""
from __future__ import annotations

import glob
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from finsent.core.schema import EncoderModel, EvalModel, RecordedModel, TestSetSpec, ZeroShotModel
from finsent.data.splits import sample_rows, test_rows
from finsent.evaluation.baselines import MajorityClassifier, TfidfLogReg
from finsent.evaluation.metrics import (PROB_COLUMNS, agreement, bootstrap_intervals, compute_metrics, headline,
                                        prediction_frame, test_names)

@dataclass
class TestSet:
    name: str
    split: str
    min_agreement: float | None = None
    models: list[str] | None = None  # only these models (e.g. a test set that overlaps others' training data)


def test_sets_from_params(spec: Mapping[str, TestSetSpec]) -> list[TestSet]:
    return [TestSet(name, s.split, s.min_agreement, s.models) for name, s in spec.items()]


def test_sets_for(model: str, spec: EvalModel, test_sets: list[TestSet]) -> list[TestSet]:
    """The test sets a model is scored on: its own ``test_sets`` list if given, and never a test
    set reserved for other models."""
    chosen = [ts for ts in test_sets if ts.models is None or model in ts.models]
    if spec.test_sets is not None:
        unknown = set(spec.test_sets) - {ts.name for ts in test_sets}
        if unknown:
            raise ValueError(f"params.yaml evaluate.models.{model}.test_sets: unknown {sorted(unknown)}")
        chosen = [ts for ts in chosen if ts.name in spec.test_sets]
    return chosen


def load_test_frames(test_sets: list[TestSet], max_rows: int | None, seed: int) -> dict[str, pd.DataFrame]:
    """Test rows per split (sampled once per split, so filtered subsets stay subsets)."""
    frames: dict[str, pd.DataFrame] = {}
    for ts in test_sets:
        if ts.split not in frames:
            frames[ts.split] = test_rows(ts.split, max_rows, seed)
    return frames


def subset(frame: pd.DataFrame, ts: TestSet) -> pd.DataFrame:
    if ts.min_agreement is None:
        return frame
    return frame[frame["agreement"].fillna(0) >= float(ts.min_agreement) - 1e-9]


def build_model(name: str, spec: EvalModel, train_df: pd.DataFrame, seed: int):
    """The model ``evaluate.models.<name>`` describes (its kind is checked by the schema)."""
    if spec.kind == "majority":
        return MajorityClassifier().fit(train_df["text"], train_df["label"])
    if spec.kind == "tfidf":
        return TfidfLogReg(C=spec.C, seed=seed, analyzer=spec.analyzer, ngram_range=spec.ngram_range,
                           class_weight=spec.class_weight).fit(train_df["text"], train_df["label"])
    if isinstance(spec, RecordedModel):
        return RecordedPredictions(spec)
    if isinstance(spec, EncoderModel):  # encoder / onnx: the loader `finsent predict` and `finsent serve` use
        from finsent.inference.classifiers import load_classifier
        return load_classifier(spec.model, spec.kind, batch_size=spec.batch_size, max_length=spec.max_length,
                               dtype=spec.dtype, label_map=spec.label_map)
    if isinstance(spec, ZeroShotModel):
        from finsent.inference.classifiers import EmbeddingZeroShot
        return EmbeddingZeroShot(spec.model, batch_size=spec.batch_size, max_length=spec.max_length,
                                 temperature=spec.temperature)
    return PrecomputedPredictions(spec.path)


class PrecomputedPredictions:
    """Probabilities another stage wrote: <path>/<split>.csv with id and p_<label> columns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def predict_frame(self, split: str, frame: pd.DataFrame) -> np.ndarray:
        file = self.path / f"{split}.csv"
        if not file.exists():
            raise FileNotFoundError(f"{file}: no predictions for split '{split}'; run the stage that writes them")
        pred = pd.read_csv(file, dtype={"id": str}).set_index("id")
        missing = sorted(set(frame["id"]) - set(pred.index))
        if missing:
            raise ValueError(f"{file}: {len(missing)} test ids have no prediction (first: {missing[0]})")
        return pred.loc[frame["id"], PROB_COLUMNS].to_numpy()


class RecordedPredictions:
    """A recorded model as an evaluated model: its answer per test post, as one-hot probabilities."""

    def __init__(self, spec: RecordedModel):
        from finsent.teachers.recorded import RecordedTeacher

        self.teacher = RecordedTeacher(spec)

    def predict_frame(self, split: str, frame: pd.DataFrame) -> np.ndarray:
        from finsent.core.labelset import LABELS

        answers = self.teacher.label(frame["text"].tolist(), None)
        bad = [(i, a) for i, a in zip(frame["id"], answers) if a.label is None]
        if bad:
            raise ValueError(f"recorded model {self.teacher.model}: {len(bad)} of {len(frame)} '{split}' test posts "
                             f"have no valid answer in {self.teacher.files} (first: {bad[0][0]}: {bad[0][1].reason}); "
                             f"score it only on test sets it answered (evaluate.models.<name>.test_sets)")
        return np.array([[float(a.label == lab) for lab in LABELS] for a in answers])


def predict(model, split: str, frame: pd.DataFrame) -> np.ndarray:
    if isinstance(model, (PrecomputedPredictions, RecordedPredictions)):
        return model.predict_frame(split, frame)
    return model.predict_proba(frame["text"].tolist())


def evaluate_all(models: Mapping[str, EvalModel], test_sets: list[TestSet], train_df: pd.DataFrame,
                 *, max_rows: int | None = None, seed: int = 42, resamples: int = 1000, log=print):
    """Returns (results[model][test_set] -> full metrics, predictions[model][split] -> frame,
    labels[model][test_set] -> frame of actual / predicted labels, seconds[model] -> wall time to build
    and run it)."""
    frames = load_test_frames(test_sets, max_rows, seed)
    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, dict[str, pd.DataFrame]] = {}
    pairs: dict[str, dict[str, pd.DataFrame]] = {}
    seconds: dict[str, float] = {}
    for name, spec in models.items():
        start = time.perf_counter()
        model = build_model(name, spec, train_df, seed)
        mine = test_sets_for(name, spec, test_sets)
        rows = {split: sample_rows(frames[split], spec.max_rows, seed) for split in dict.fromkeys(ts.split for ts in mine)}
        predictions[name] = {split: prediction_frame(frame, predict(model, split, frame), name)
                             for split, frame in rows.items()}
        seconds[name] = round(time.perf_counter() - start, 1)
        results[name], pairs[name] = {}, {}
        for ts in mine:
            pred = subset(predictions[name][ts.split].assign(agreement=rows[ts.split]["agreement"].to_numpy()), ts)
            results[name][ts.name] = {**compute_metrics(pred["label"], pred["pred"]),
                                      **bootstrap_intervals(pred["label"], pred["pred"], resamples, seed)}
            pairs[name][ts.name] = (pred.set_index("id")[["label", "pred"]]  # by test row id: backend_report
                                    .rename(columns={"label": "actual", "pred": "predicted"}))  # aligns samples
            m = results[name][ts.name]
            log(f"{name:>18} on {ts.name:<14} n={m['n']:<5} acc {m['accuracy']:.4f}  "
                f"macro-F1 {m['macro_f1']:.4f} {m.get('macro_f1_ci', '')}  weighted-F1 {m['weighted_f1']:.4f}")
        log(f"{name:>18} built and run in {seconds[name]} s")
    return results, predictions, pairs, seconds


def _cell(m: Mapping[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci")
    return f"{m[key]:.4f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{m[key]:.4f}"


def summary_markdown(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Accuracy and macro-F1 (with their bootstrap 95% intervals) and weighted-F1 per model and test set;
    a model scored on fewer rows of a test set than the others (its own ``max_rows``) says how many."""
    tests = test_names(results)
    full = {t: max(per[t]["n"] for per in results.values() if t in per) for t in tests}
    lines = ["| model | " + " | ".join(f"{t} acc [95% CI] | {t} macro-F1 [95% CI] | {t} weighted-F1" for t in tests)
             + " |", "|---|" + "---|" * (3 * len(tests))]
    for model, per_test in results.items():
        cells = []
        for t in tests:
            if t not in per_test:
                cells.append("— | — | —")
                continue
            m = per_test[t]
            sample = f" (sample: {m['n']} of {full[t]} rows)" if m["n"] < full[t] else ""
            cells.append(f"{_cell(m, 'accuracy')}{sample} | {_cell(m, 'macro_f1')} | {m['weighted_f1']:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HEADLINE_FIELDS = ("accuracy", "macro_f1", "macro_f1_ci")  # per headline model and test set: the DVC metrics


def headline_patterns(models: list[str]) -> list[str]:
    """core.io.headline patterns that keep HEADLINE_FIELDS of ``models`` from the evaluate report (the
    rest of it, every model's weighted-F1, P/R, n and accuracy interval, stays in metrics/evaluate.json)."""
    return [f"{glob.escape(model)}.*.{field}" for model in models for field in HEADLINE_FIELDS]


def split_metrics(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[dict, dict]:
    """(the report: every model's figures without the per-class detail; per-class metrics) nested model ->
    test set, ready for JSON. The DVC metric is the part of the report that :func:`headline_patterns` keeps."""
    heads = {m: {t: headline(v) for t, v in per.items()} for m, per in results.items()}
    per_class = {m: {t: v["per_class"] for t, v in per.items()} for m, per in results.items()}
    return heads, per_class


def student_report(results: Mapping[str, Mapping[str, Mapping[str, Any]]], labels: str,
                   label_metrics: Mapping[str, Any] | None, student: str = "encoder",
                   teacher_model: str | None = None) -> dict[str, Any]:
    """How much of its teacher the student keeps. With ``teacher_model`` (the teacher is an evaluated
    model, e.g. recorded GPT answers) both are scored on the same test sets and the ratios are direct;
    otherwise the teacher's accuracy is its agreement with gold on the pool it labelled (label stage),
    and with ``labels: gold`` the teacher is the gold labels themselves (accuracy 1)."""
    if teacher_model:
        if teacher_model not in results:
            raise ValueError(f"evaluate.teacher={teacher_model!r} is not an evaluated model")
        per_test = {}
        for t, m in results.get(student, {}).items():
            ref = results[teacher_model].get(t)
            if ref is None:
                continue
            per_test[t] = {"student_accuracy": m["accuracy"], "teacher_accuracy": ref["accuracy"],
                           "student_macro_f1": m["macro_f1"], "teacher_macro_f1": ref["macro_f1"],
                           "student_accuracy_ci": m.get("accuracy_ci"), "student_macro_f1_ci": m.get("macro_f1_ci"),
                           "accuracy_ratio": round(m["accuracy"] / ref["accuracy"], 4) if ref["accuracy"] else None,
                           "macro_f1_ratio": round(m["macro_f1"] / ref["macro_f1"], 4) if ref["macro_f1"] else None}
        teacher = (label_metrics or {}).get("teacher_id", teacher_model)
        return {"labels": labels, "teacher": teacher, "teacher_model": teacher_model, "student": student,
                "per_test_set": per_test}
    if labels == "teacher":
        if not label_metrics or not label_metrics.get("agreement_with_gold", {}).get("n"):
            raise ValueError("train.labels=teacher but metrics/label.json has no agreement with gold; run the label stage")
        teacher, teacher_acc = label_metrics["teacher_id"], float(label_metrics["agreement_with_gold"]["accuracy"])
    else:
        teacher, teacher_acc = "gold", 1.0
    return {"labels": labels, "teacher": teacher, "teacher_accuracy_vs_gold": teacher_acc, "student": student,
            "per_test_set": {t: {"student_accuracy": m["accuracy"],
                                 "student_teacher_ratio": round(m["accuracy"] / teacher_acc, 4) if teacher_acc else None}
                             for t, m in results.get(student, {}).items()}}


def backend_report(models: Mapping[str, EvalModel], results: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   pairs: Mapping[str, Mapping[str, pd.DataFrame]], tolerance: float) -> dict[str, Any]:
    """For every model with a ``reference``: per test set its macro-F1, the reference's, the change,
    whether the loss is within ``tolerance`` (0.005 = half a point), and the share of rows where
    both predict the same label, all on the rows both were scored on (``pairs`` are indexed by test row:
    a model scored on a sample of a test set is compared with the reference on that sample)."""
    report: dict[str, Any] = {}
    for name, spec in models.items():
        ref = spec.reference
        if not ref:
            continue
        if ref not in results:
            raise ValueError(f"params.yaml evaluate.models.{name}.reference={ref!r} is not an evaluated model")
        report[name] = {"reference": ref, "tolerance": tolerance, "per_test_set": {}}
        for test, m in results[name].items():
            if test not in results[ref]:
                continue
            mine, theirs = pairs[name][test], pairs[ref][test]
            if len(mine) == len(theirs):
                base = results[ref][test]["macro_f1"]
            else:  # a sample: the reference on the same rows
                missing = mine.index.difference(theirs.index)
                if len(missing):
                    raise ValueError(f"evaluate.models.{name} on {test}: {len(missing)} rows the reference {ref!r} "
                                     f"was not scored on (first: {missing[0]})")
                theirs = theirs.loc[mine.index]
                base = compute_metrics(theirs["actual"], theirs["predicted"])["macro_f1"]
            delta = round(m["macro_f1"] - base, 4)
            same = agreement(theirs["predicted"].tolist(), mine["predicted"].tolist())["accuracy"]
            report[name]["per_test_set"][test] = {
                "n": len(mine), "macro_f1": m["macro_f1"], "reference_macro_f1": base, "delta_macro_f1": delta,
                "within_tolerance": bool(delta >= -tolerance - 1e-9), "label_agreement": same}
        report[name]["all_within_tolerance"] = all(v["within_tolerance"]
                                                   for v in report[name]["per_test_set"].values())
    return report
