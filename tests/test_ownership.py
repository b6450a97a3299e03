"""One owner for every fact: dvc.yaml code deps = import closures, params checked at the boundary,
model directories that describe themselves (cards)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from finsent.core.cards import read_card, write_card
from finsent.core.params import ParamsError, read_yaml, validate
from finsent.pipeline import deps

from .conftest import MINILM, build_tiny_llama


# ---- dvc.yaml deps ------------------------------------------------------------------------------

def _scratch(root, tmp_path):
    """dvc.yaml, stages/ and finsent/ copied: what the deps check reads."""
    shutil.copy2(root / "dvc.yaml", tmp_path / "dvc.yaml")
    for folder in ("stages", "finsent"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_dvc_yaml_code_deps_are_the_import_closures(root):
    assert deps.problems(root) == [], "run: python -m finsent.pipeline.deps --write"
    closure = deps.import_closure(root / "stages/train.py", root)
    assert "finsent/training/encoder.py" in closure and "finsent/core/runtime.py" in closure
    assert not any(p.startswith(("finsent/serving/", "finsent/teachers/")) for p in closure)
    # a module imported inside a function counts: it runs when the stage runs
    assert "finsent/inference/classifiers.py" in deps.import_closure(root / "stages/evaluate.py", root)


def test_deps_check_fails_on_a_removed_or_a_stray_dep(root, tmp_path):
    repo = _scratch(root, tmp_path)
    text = (repo / "dvc.yaml").read_text()
    (repo / "dvc.yaml").write_text(text.replace("      - finsent/core/runtime.py\n", "", 1))  # the train stage's
    found = deps.problems(repo)
    assert any(line.startswith("convert") is False and "misses ['finsent/core/runtime.py']" in line for line in found)
    assert subprocess.run([sys.executable, "-m", "finsent.pipeline.deps", "--check", "--root", str(repo)],
                          capture_output=True, cwd=root).returncode == 1
    assert deps.rewrite(repo) and deps.problems(repo) == []
    stray = (repo / "dvc.yaml").read_text().replace("      - stages/split.py\n",
                                                     "      - stages/split.py\n      - finsent/serving/app.py\n")
    (repo / "dvc.yaml").write_text(stray)
    assert deps.problems(repo) == ["split: dvc.yaml lists ['finsent/serving/app.py'], which the stage never imports"]
    deps.rewrite(repo)
    assert (repo / "dvc.yaml").read_text() == (root / "dvc.yaml").read_text()  # comments and data deps kept


# ---- params ---------------------------------------------------------------------------------------

def test_unknown_key_names_its_path_and_the_closest_valid_key(root):
    data = read_yaml(root / "params.yaml")
    data["train"]["hp_sett"] = "fast"
    data["llm_hp_sets"]["smollm2-cpu"]["lora"]["alpah"] = 8
    data["evaluate"]["models"]["encoder"]["max_lenght"] = 64
    with pytest.raises(ParamsError) as err:
        validate(data)
    text = str(err.value)
    assert "train: unknown key 'hp_sett' (did you mean 'hp_set'?)" in text
    assert "llm_hp_sets.smollm2-cpu.lora: unknown key 'alpah' (did you mean 'alpha'?)" in text
    assert "evaluate.models.encoder[kind=encoder]: unknown key 'max_lenght' (did you mean 'max_length'?)" in text


def test_mistyped_values_and_dangling_names_are_errors(root):
    data = read_yaml(root / "params.yaml")
    data["hp_sets"]["minilm"]["learning_rate"] = "fast"
    with pytest.raises(ParamsError, match=r"hp_sets\.minilm\.learning_rate"):
        validate(data)
    data = read_yaml(root / "params.yaml")
    data["train"]["hp_set"] = "minlm"
    with pytest.raises(ParamsError, match="did you mean 'minilm'"):
        validate(data)
    assert validate(read_yaml(root / "params.yaml")).hp.head_lr_multiplier == 10  # defaults live in the schema


@pytest.mark.slow
@pytest.mark.parametrize("override, hint", [
    ("+train.hp_sett=fast", "train: unknown key 'hp_sett' (did you mean 'hp_set'?)"),  # a new key: DVC adds it
    ("train.hp_set=fsat", "train.hp_set: 'fsat' is not defined (did you mean 'fast'?)"),
    ("hp_sets.minilm.learning_rate=fast", "hp_sets.minilm.learning_rate: Input should be a valid number"),
])
def test_typo_in_dvc_exp_run_fails_fast_naming_the_key(root, tmp_path, override, hint):
    """`dvc exp run -S` with a typo'd key or value stops at the first stage that runs, in seconds and
    before any training: every stage validates the whole params.yaml before importing torch. (DVC
    itself refuses `-S train.hp_sett=...` for a key that does not exist; `+key=` adds one.)"""
    from finsent.pipeline.ci import commit_all, scratch_copy

    repo = scratch_copy(root, tmp_path / "repo")
    commit_all(repo, "scratch")
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
    start = time.perf_counter()
    result = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=repo, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0 and hint in output, output[-2000:]
    assert "Running stage 'train'" not in output  # stopped before any training
    # The stage's own share: it fails on the params before importing torch (~1 s on a quiet machine).
    bad = repo / "params.yaml"  # dvc exp run left the override in the workspace's params.yaml
    start = time.perf_counter()
    stage = subprocess.run([sys.executable, "stages/train.py", "--params", str(bad)], cwd=repo, capture_output=True,
                           text=True)
    stage_seconds = time.perf_counter() - start
    assert stage.returncode != 0 and hint in stage.stderr and "Traceback" not in stage.stderr, stage.stderr[-2000:]
    print(f"dvc exp run -S {override}: failed after {seconds:.1f} s (the stage alone: {stage_seconds:.1f} s)")
    # Bounds wide enough for a loaded CI machine; the quiet-machine figures are in the README.
    assert stage_seconds < 5 and seconds < 15, (seconds, stage_seconds)


# ---- model cards ----------------------------------------------------------------------------------

def test_encoder_is_served_at_the_length_it_was_trained_at(finetuned, tmp_path):
    from finsent.inference.classifiers import load_classifier
    from finsent.inference.export import export_onnx

    model_dir, summary, *_ = finetuned
    card = read_card(model_dir)
    assert card["max_length"] == 64 and card["base_model"] == MINILM and card["hp_set"] == "tiny"
    assert card["labels"] == ["negative", "neutral", "positive"] and card["data_fingerprint"].startswith("sha256:")
    assert load_classifier(str(model_dir), "encoder").max_length == 64
    assert load_classifier(str(model_dir), "encoder", max_length=32).max_length == 32  # a flag still wins
    onnx = export_onnx(str(model_dir), tmp_path / "fp32", name="tiny")
    assert onnx["max_length"] == 64 and onnx["data_fingerprint"] == card["data_fingerprint"]
    assert load_classifier(str(tmp_path / "fp32")).max_length == 64
    # The card's label order decides the columns, whatever the config says.
    write_card(tmp_path / "fp32", **{**onnx, "labels": ["positive", "negative", "neutral"]})
    assert load_classifier(str(tmp_path / "fp32")).to_labels.argmax(axis=1).tolist() == [2, 0, 1]


def test_predict_with_an_adapter_from_any_directory(tmp_path, fpb, root):
    """The adapter's card names its base model: no params.yaml is read, so the working directory
    does not matter."""
    pytest.importorskip("peft")
    from finsent.core.schema import LoraSpec
    from finsent.inference.causal_lm import load_causal_lm
    from finsent.training.lora import add_lora

    base = build_tiny_llama(tmp_path / "base", fpb.rows["text"].head(20).tolist())
    model, tok = load_causal_lm(str(base))
    model = add_lora(model, LoraSpec(r=2, alpha=4), quantized=False)
    adapter = tmp_path / "somewhere/else/adapter"
    model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    write_card(adapter, model_id="llm-test", kind="llm", base_model=str(base), max_length=64)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/nonexistent/path"  # only the card knows the base
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    posts = tmp_path / "elsewhere"
    posts.mkdir()
    pd.DataFrame({"text": fpb.rows["text"].head(5)}).to_csv(posts / "in.csv", index=False)
    result = subprocess.run([sys.executable, "-m", "finsent.cli", "predict", "in.csv", "-o", "out.csv", "--model",
                             str(adapter), "--no-progress"], cwd=posts, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (posts / "params.yaml").exists()
    out = pd.read_csv(posts / "out.csv")
    assert len(out) == 5 and set(out["label"]) <= {"negative", "neutral", "positive"}
