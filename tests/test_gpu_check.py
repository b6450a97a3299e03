"""bench/gpu_check.sh in its CPU dry mode: the GPU recipes' check runs in CI so that it cannot rot."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.gpu_check import DRY_PARAMS

pytestmark = pytest.mark.slow


def test_gpu_check_dry_mode_trains_the_encoder_and_the_teacher_and_names_what_it_skipped(root, tmp_path):
    import torch

    committed = (root / "metrics/train.json").read_bytes()
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry", "--out", str(out)], cwd=root,
                          capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "dry" and set(report["steps"]) == {"encoder_default", "qlora", "encoder_mpnet"}
    enc = report["steps"]["encoder_default"]
    assert enc["status"] == "ok" and enc["stage"] == "train" and enc["stage_s"] > 0
    assert enc["metrics"]["hp_set"] == "tiny" and enc["metrics"]["val_macro_f1"] > 0.4   # a real, trained model
    assert enc["timings"]["train_seconds"] > 0 and "train_seconds" not in enc["metrics"]
    qlora, mpnet = report["steps"]["qlora"], report["steps"]["encoder_mpnet"]
    if not torch.cuda.is_available():
        assert enc["peak_gpu_memory_mib"] is None
        assert qlora["status"] == "skipped" and "CUDA only" in qlora["reason"]
    assert mpnet["status"] == "ok" and mpnet["stage"] == "train_teacher"   # the frozen stage, unfrozen in the copy
    assert mpnet["metrics"]["base_model"].startswith("pkg://all-mpnet-base-v2") and mpnet["metrics"]["steps"] > 0
    dry_rows = DRY_PARAMS["encoder_mpnet"]["train"]["max_train_rows"]
    assert mpnet["metrics"]["soft_targets_rows"] == dry_rows   # a probability for every row it learnt from
    assert (root / "metrics/train.json").read_bytes() == committed   # it ran in a scratch copy
