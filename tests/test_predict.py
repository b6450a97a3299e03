"""`finsent predict`, the backends it runs on (PyTorch fp32 / bf16, ONNX Runtime fp32 / int8) and the
export behind them, on real posts and a real (small, quickly fitted) classifier."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest

from finsent.core.schema import EncoderModel, PredictionsModel
from finsent.evaluation.evaluate import backend_report
from finsent.inference.export import check_exports, export_onnx, quantize_int8
from finsent.core.labelset import LABELS
from finsent.evaluation.metrics import PROB_COLUMNS
from finsent.inference.classifiers import EncoderClassifier, OnnxClassifier, load_classifier
from finsent.serving.app import create_app
from finsent.serving.background import BackgroundServer
from finsent.inference.stream import file_format, predict_file, rejects_path_for


# Tolerances this project states for "the same labels" across backends on real posts (the pipeline's
# own numbers for the fine-tuned encoder on the test sets are in metrics/backends.json).
ONNX_FP32_MAX_PROB_DIFF = 1e-4   # fp32 ONNX Runtime vs PyTorch: the same computation, float rounding only
INT8_MIN_AGREEMENT = 0.95        # dynamic int8 vs fp32: share of posts with the same label
BF16_MIN_AGREEMENT = 0.97        # PyTorch bfloat16 vs float32


def test_export_writes_self_contained_model_directories(exported):
    out, fp32, int8 = exported
    for precision, card in (("fp32", fp32), ("int8", int8)):
        directory = out / precision
        assert {"model.onnx", "config.json", "tokenizer.json", "finsent_model.json"} <= {p.name for p in directory.iterdir()}
        assert json.loads((directory / "finsent_model.json").read_text())["model_id"] == f"fitted:onnx-{precision}"
        assert card["size_mb"] > 10
    assert int8["size_mb"] < 0.75 * fp32["size_mb"]  # int8 linear weights


@pytest.mark.slow
def test_backends_agree_on_real_posts(finetuned, tmp_path):
    """A really fine-tuned encoder, exported and quantized, on 500 held-out FPB sentences."""
    model_dir, _, _, _, parts = finetuned
    posts = parts["test"]["text"].head(500).tolist()
    export_onnx(str(model_dir), tmp_path / "fp32", name="finetuned")
    quantize_int8(tmp_path / "fp32", tmp_path / "int8", name="finetuned")
    reference = EncoderClassifier(str(model_dir))
    candidates = {"onnx_fp32": OnnxClassifier(str(tmp_path / "fp32")),
                  "onnx_int8": OnnxClassifier(str(tmp_path / "int8")),
                  "torch_bf16": EncoderClassifier(str(model_dir), dtype="bfloat16")}
    checks = check_exports(reference, candidates, posts)
    assert len(set(reference.predict_proba(posts).argmax(1))) == 3  # every class is predicted on real posts
    assert checks["onnx_fp32"]["label_agreement"] == 1.0
    assert checks["onnx_fp32"]["max_abs_prob_diff"] < ONNX_FP32_MAX_PROB_DIFF
    assert checks["onnx_int8"]["label_agreement"] >= INT8_MIN_AGREEMENT, checks
    assert checks["torch_bf16"]["label_agreement"] >= BF16_MIN_AGREEMENT, checks


def test_length_ordered_batches_keep_input_order(exported, posts):
    clf = OnnxClassifier(str(exported[0] / "fp32"), batch_size=7)
    batched = clf.predict_proba(posts[:40])
    one_by_one = np.vstack([clf.predict_proba([t]) for t in posts[:40]])
    assert np.allclose(batched, one_by_one, atol=1e-5)  # padding never changes a row's probabilities
    assert np.allclose(batched.sum(axis=1), 1, atol=1e-6)


def test_load_classifier_detects_the_backend(fitted_dir, exported):
    assert isinstance(load_classifier(str(exported[0] / "int8")), OnnxClassifier)
    clf = load_classifier(str(fitted_dir), dtype="float32")
    assert isinstance(clf, EncoderClassifier) and clf.model_id.endswith(":torch-float32")
    with pytest.raises(ValueError, match="--kind"):
        load_classifier(str(fitted_dir), kind="tflite")


def _write(frame: pd.DataFrame, path, fmt: str) -> None:
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def _read(path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=False, dtype={"id": str})
    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True, dtype={"id": str})


@pytest.mark.parametrize("fmt_in,fmt_out", [("csv", "parquet"), ("parquet", "jsonl"), ("jsonl", "csv"),
                                            ("csv", "csv")])
def test_predict_file_schema_and_probabilities(exported, posts, tmp_path, fmt_in, fmt_out):
    clf = OnnxClassifier(str(exported[0] / "int8"))
    texts = posts[:120]
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(len(texts))], "text": texts, "label": "gold"})
    src, dst = tmp_path / f"in.{fmt_in}", tmp_path / f"out.{fmt_out}"
    _write(frame, src, fmt_in)
    summary = predict_file(clf, src, dst, chunk_size=50, progress=False)  # three chunks
    out = _read(dst, fmt_out)
    assert list(out.columns) == ["row", "id", "text", "input_label", "label", *PROB_COLUMNS, "model"]
    assert out["row"].tolist() == list(range(len(texts))) and out["id"].tolist() == frame["id"].tolist()
    assert out["text"].tolist() == texts and set(out["input_label"]) == {"gold"}
    assert np.allclose(out[PROB_COLUMNS].sum(axis=1), 1, atol=1e-5)
    assert set(out["label"]) <= set(LABELS) and (out["model"] == "fitted:onnx-int8").all()
    direct = clf.predict_proba(texts)  # the same numbers as one call on the whole list (int8 runs post by post)
    assert np.allclose(out[PROB_COLUMNS].to_numpy(), direct, atol=1e-5)
    assert out["label"].tolist() == [LABELS[i] for i in direct.argmax(1)]
    assert summary["rows_in"] == summary["rows_predicted"] == len(texts) and summary["rows_rejected"] == 0
    assert pd.read_csv(rejects_path_for(dst)).empty  # written even when empty: no stale rejects survive


def test_bad_rows_are_reported_not_dropped(exported, tmp_path):
    clf = OnnxClassifier(str(exported[0] / "int8"))
    lines = ['{"id": 1, "text": "Operating profit rose to EUR 13.1 mn ."}',
             '{"id": 2, "text": ""}',
             '{"id": 3, "text": "   "}',
             '{"id": 4, "text": null}',
             '{"id": 5, "text": 42}',
             '{"id": 6, "text": ["a", "list"]}',
             '{"id": 7}',
             '{"id": 8, "text": "Net sales fell 20 % and the company cut 300 jobs ."}',
             'this line is not JSON',
             '[1, 2]',
             '',
             '{"id": 11, "text": "The company is based in Helsinki ."}']
    src, dst = tmp_path / "posts.jsonl", tmp_path / "labels.csv"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = predict_file(clf, src, dst, chunk_size=4, progress=False)
    out = pd.read_csv(dst)
    assert out["row"].tolist() == [0, 7, 10] and out["id"].tolist() == [1, 8, 11]  # blank line is not a record
    rejects = pd.read_csv(summary["rejects"], keep_default_na=False)
    assert rejects["row"].tolist() == [1, 2, 3, 4, 5, 6, 8, 9]
    assert rejects["reason"].tolist() == ["empty", "empty", "missing", "not text (int)", "not text (list)", "missing",
                                          "invalid JSON (Expecting value)", "not a JSON object (list)"]
    assert summary["rows_in"] == 11 and summary["rows_predicted"] == 3 and summary["rows_rejected"] == 8
    assert summary["rejected_by_reason"]["empty"] == 2 and sum(summary["rejected_by_reason"].values()) == 8


def test_jsonl_chunk_without_the_text_key_counts_as_missing(exported, tmp_path):
    clf = OnnxClassifier(str(exported[0] / "int8"))
    src = tmp_path / "posts.jsonl"
    src.write_text('{"text": "Profit rose ."}\n{"text": "Sales fell ."}\n{"id": 3}\n{"id": 4}\n', encoding="utf-8")
    summary = predict_file(clf, src, tmp_path / "out.csv", chunk_size=2, progress=False)
    assert summary["rows_predicted"] == 2 and summary["rejected_by_reason"] == {"missing": 2}
    assert pd.read_csv(summary["rejects"])["row"].tolist() == [2, 3]


def test_csv_empty_cells_and_missing_text_column(exported, tmp_path):
    clf = OnnxClassifier(str(exported[0] / "int8"))
    src = tmp_path / "posts.csv"
    src.write_text('body,source\n"Profit rose , and shares jumped .",a\n,b\n"Sales fell .",c\n', encoding="utf-8")
    summary = predict_file(clf, src, tmp_path / "out.jsonl", text_column="body", keep_columns=["source"],
                           progress=False)
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert list(out.columns) == ["row", "source", "label", *PROB_COLUMNS, "model"] and out["row"].tolist() == [0, 2]
    assert summary["rejected_by_reason"] == {"empty": 1}
    with pytest.raises(KeyError, match="--text-column"):
        predict_file(clf, src, tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.csv").exists()  # a failed run leaves no half-written output
    with pytest.raises(ValueError, match="extension"):
        file_format(tmp_path / "posts.xlsx")


def test_cli_predict_gzip_csv_with_summary(exported, posts, tmp_path, root):
    src = tmp_path / "posts.csv.gz"
    pd.DataFrame({"text": posts[:64] + [""]}).to_csv(src, index=False)
    dst, summary_file = tmp_path / "labels.parquet", tmp_path / "summary.json"
    result = subprocess.run([sys.executable, "-m", "finsent.cli", "predict", str(src), "-o", str(dst), "--model",
                             str(exported[0] / "int8"), "--keep-columns", "", "--threads", "1", "--chunk-size", "16",
                             "--summary", str(summary_file)], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(summary_file.read_text())
    assert summary["rows_predicted"] == 64 and summary["rows_rejected"] == 1 and summary["posts_per_s"] > 0
    assert "1 rows could not be classified" in result.stderr and "post/s" in result.stderr  # progress bar
    out = pd.read_parquet(dst)
    assert list(out.columns) == ["row", "label", *PROB_COLUMNS, "model"] and len(out) == 64


def test_serve_answers_with_the_predict_path(exported, posts):
    """`finsent serve` on an ONNX export gives the probabilities `finsent predict` writes."""
    from openai import OpenAI

    clf = load_classifier(str(exported[0] / "int8"))
    texts = posts[:16]
    expected = clf.predict_proba(texts)
    with BackgroundServer(create_app(clf, "finsent-int8")) as url:
        request = urllib.request.Request(f"{url}/classify", data=json.dumps({"input": texts}).encode(),
                                         headers={"content-type": "application/json"})
        data = json.loads(urllib.request.urlopen(request, timeout=60).read())["data"]
        answer = OpenAI(base_url=url, api_key="unused").chat.completions.create(
            model="finsent-int8", messages=[{"role": "user", "content": texts[0]}])
    served = np.array([[row["probs"][lab] for lab in LABELS] for row in data])
    assert np.allclose(served, expected, atol=1e-6)
    assert answer.choices[0].message.content == LABELS[int(expected[0].argmax())]


def test_backend_report_flags_losses_beyond_tolerance():
    frame = lambda pred: pd.DataFrame({"actual": ["negative", "neutral", "positive", "neutral"],  # noqa: E731
                                       "predicted": pred})
    results = {"encoder": {"fpb": {"macro_f1": 0.85}, "tweets": {"macro_f1": 0.82}},
               "encoder_int8": {"fpb": {"macro_f1": 0.846}, "tweets": {"macro_f1": 0.81}}}
    pairs = {"encoder": {t: frame(["negative", "neutral", "positive", "neutral"]) for t in ("fpb", "tweets")},
             "encoder_int8": {t: frame(["negative", "neutral", "neutral", "neutral"]) for t in ("fpb", "tweets")}}
    models = {"encoder": EncoderModel(kind="encoder", model="m"),
              "encoder_int8": EncoderModel(kind="onnx", model="m8", reference="encoder")}
    report = backend_report(models, results, pairs, tolerance=0.005)
    rows = report["encoder_int8"]["per_test_set"]
    assert rows["fpb"]["delta_macro_f1"] == -0.004 and rows["fpb"]["within_tolerance"]
    assert rows["tweets"]["delta_macro_f1"] == -0.01 and not rows["tweets"]["within_tolerance"]
    assert rows["fpb"]["label_agreement"] == 0.75 and not report["encoder_int8"]["all_within_tolerance"]
    with pytest.raises(ValueError, match="reference"):
        backend_report({"x": PredictionsModel(kind="predictions", path="p", reference="nope")}, results, pairs, 0.005)


def test_a_backend_scored_on_a_sample_is_compared_with_its_reference_on_the_same_rows(fpb, params, monkeypatch):
    """evaluate.models.<m>.max_rows: the model is scored on a stratified sample of each test split (its
    figures say n = the sample), and backends.json compares it with its reference on those same rows: the
    reference's macro-F1 there, not on the whole set; the summary says the figures cover a sample."""
    from finsent.core.schema import MajorityModel, TfidfModel
    from finsent.data.split import make_split
    from finsent.evaluation import evaluate as ev
    from finsent.evaluation.metrics import compute_metrics

    parts = make_split(fpb.rows, params.splits["fpb"], seed=42).parts
    test = parts["test"]
    monkeypatch.setattr(ev, "load_test_frames", lambda test_sets, max_rows, seed: {"fpb": test})
    models = {"tfidf": TfidfModel(kind="tfidf"),
              "tfidf_sampled": TfidfModel(kind="tfidf", reference="tfidf", max_rows=120),
              "majority": MajorityModel(kind="majority", reference="tfidf", max_rows=120)}
    test_sets = [ev.TestSet("fpb", "fpb"), ev.TestSet("fpb_allagree", "fpb", 1.0)]
    results, predictions, pairs, seconds = ev.evaluate_all(models, test_sets, parts["train"], resamples=50,
                                                           log=lambda *_: None)
    assert set(seconds) == set(models)
    assert results["tfidf"]["fpb"]["n"] == len(test) > 120 and results["majority"]["fpb"]["n"] == 120
    sample = predictions["majority"]["fpb"]
    assert sample["id"].is_unique and set(sample["id"]) <= set(test["id"])
    report = ev.backend_report(models, results, pairs, tolerance=0.005)
    same = report["tfidf_sampled"]["per_test_set"]   # the same model on the sample: nothing lost
    assert same["fpb"] == {**same["fpb"], "n": 120, "label_agreement": 1.0, "delta_macro_f1": 0.0}
    allagree = test.set_index("id").loc[sample["id"], "agreement"].fillna(0).ge(1.0).sum()
    assert same["fpb_allagree"]["n"] == allagree < 120
    ref = predictions["tfidf"]["fpb"].set_index("id").loc[sample["id"]]
    row = report["majority"]["per_test_set"]["fpb"]
    assert row["reference_macro_f1"] == compute_metrics(ref["label"], ref["pred"])["macro_f1"]
    assert row["reference_macro_f1"] != results["tfidf"]["fpb"]["macro_f1"]
    assert row["label_agreement"] == pytest.approx((ref["pred"].to_numpy() == sample["pred"].to_numpy()).mean(), abs=1e-4)
    assert not row["within_tolerance"]
    summary = ev.summary_markdown(results)
    assert f"(sample: 120 of {len(test)} rows)" in summary and summary.count("(sample:") == 4


def test_cli_names_the_fix_when_the_pipeline_model_is_missing(tmp_path, root):
    (tmp_path / "posts.csv").write_text("text\nProfit rose .\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "finsent.cli", "predict", "posts.csv", "-o", "out.csv",
                             "--model", "models/encoder"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode != 0 and "dvc repro" in result.stderr and not (tmp_path / "out.csv").exists()


# ---- nothing falls through: every record is predicted or rejected (issue 14) -------------------------

MALFORMED_JSONL = [b'{"text": "Profit rose ."}', b"null", b"[1, 2]", b"7", b'"a string"', b"{broken",
                   b'{"text": "caf\xe9 sales fell ."}', b'{"text": null}', b'{"text": "Sales fell ."}']
BAD_BYTE = len(b"\n".join(MALFORMED_JSONL[:6]) + b"\n") + MALFORMED_JSONL[6].index(b"\xe9")  # offset in the file


def test_jsonl_null_list_number_and_non_utf8_lines_are_rejects(exported, tmp_path):
    clf = OnnxClassifier(str(exported[0] / "int8"))
    src = tmp_path / "posts.jsonl"
    src.write_bytes(b"\n".join(MALFORMED_JSONL) + b"\n")
    summary = predict_file(clf, src, tmp_path / "out.csv", chunk_size=3, progress=False)
    rejects = pd.read_csv(summary["rejects"], keep_default_na=False)
    assert rejects["reason"].tolist() == ["not a JSON object (null)", "not a JSON object (list)",
                                          "not a JSON object (int)", "not a JSON object (str)",
                                          "invalid JSON (Expecting property name enclosed in double quotes)",
                                          f"not UTF-8 (byte {BAD_BYTE} of the file)", "missing"]
    assert summary["rows_in"] == 9 == summary["rows_predicted"] + summary["rows_rejected"]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "jsonl.gz", "parquet"])
def test_rows_in_equal_rows_out_plus_rejects_for_every_format(exported, tmp_path, fmt):
    """A property over generated malformed inputs: whatever the records hold, each one is either in
    the output or in the rejects file, and the summary's counts close."""
    import random

    clf = OnnxClassifier(str(exported[0] / "int8"))
    rng = random.Random(fmt)
    values = ["Profit rose .", "", "   ", None, "Sales fell 20 % .", "x" * 3000, "\u00e9t\u00e9 \U0001F680", "a,b\nc"]
    for trial in range(3):
        texts = [rng.choice(values) for _ in range(rng.randint(1, 40))]
        src = tmp_path / f"in{trial}.{fmt}"
        frame = pd.DataFrame({"id": range(len(texts)), "text": texts})
        if fmt.startswith("csv"):
            frame.to_csv(src, index=False)
            with open(src, "ab") as fh:  # a blank line: a record with an empty text, not a skipped line
                fh.write(b"\n") if not fmt.endswith("gz") else None
        elif fmt.startswith("jsonl"):
            frame.to_json(src, orient="records", lines=True)
        else:
            frame.to_parquet(src)
        summary = predict_file(clf, src, tmp_path / f"out{trial}.csv", chunk_size=rng.randint(1, 16), progress=False)
        out = pd.read_csv(tmp_path / f"out{trial}.csv")
        rejects = pd.read_csv(summary["rejects"])
        assert summary["rows_in"] == summary["rows_predicted"] + summary["rows_rejected"], summary
        assert len(out) == summary["rows_predicted"] and len(rejects) == summary["rows_rejected"]
        assert sorted([*out["row"], *rejects["row"]]) == list(range(summary["rows_in"]))
        assert summary["rows_in"] >= len(texts)


def test_corrupt_inputs_and_overwriting_the_input_are_refused_by_name(exported, tmp_path, root):
    clf = OnnxClassifier(str(exported[0] / "int8"))
    parquet = tmp_path / "cut.parquet"
    pd.DataFrame({"text": ["Profit rose ."] * 50}).to_parquet(parquet)
    parquet.write_bytes(parquet.read_bytes()[:-30])
    with pytest.raises(ValueError, match="cut.parquet: not a readable Parquet file"):
        predict_file(clf, parquet, tmp_path / "o.csv", progress=False)
    gz = tmp_path / "cut.jsonl.gz"
    import gzip
    gz.write_bytes(gzip.compress(b'{"text": "Profit rose ."}\n' * 200)[:-20])
    with pytest.raises(ValueError, match="cut.jsonl.gz: the gzip stream is damaged"):
        predict_file(clf, gz, tmp_path / "o.csv", progress=False)
    src = tmp_path / "posts.csv"
    pd.DataFrame({"text": ["Profit rose ."]}).to_csv(src, index=False)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="is the input file"):
        predict_file(clf, src, src, progress=False)
    result = subprocess.run([sys.executable, "-m", "finsent.cli", "predict", str(src), "-o", str(src), "--model",
                             str(exported[0] / "int8")], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "is the input file" in result.stderr and "Traceback" not in result.stderr
    assert src.read_bytes() == before
    result = subprocess.run([sys.executable, "-m", "finsent.cli", "predict", str(parquet), "-o", str(tmp_path / "x.csv"),
                             "--model", str(exported[0] / "int8")], cwd=root, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "cut.parquet" in result.stderr and "Traceback" not in result.stderr
