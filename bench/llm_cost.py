"""Benchmark: what a larger causal LM would cost the LoRA stage (train_llm) on this CPU, against the default.

Issue 15 asks whether a larger causal LM that loads offline (Gemma-3-270m, ../shared/MODELS.md) fits the
stage's CPU budget. For params.yaml's `llm` hp set (the baseline: SmolLM2-135M) and each `--model`, in
float32 (what `dtype: auto` gives on a CPU without native bf16), through the stage's own functions:
`load_causal_lm`, `score_labels` on `--n` rows of the balanced test (posts/s), `add_lora` + `sft_train` for
`--steps` optimiser steps of the hp set's batch on balanced train rows (seconds per step). From these it
projects the stage at full size: one epoch of the train split's rows + scoring the base model and the
adapter on the test rows evaluate uses. Ratios are against the baseline measured in the same run; read
those: a few steps carry the first steps' warm-up, so the projection is an upper bound (SmolLM2's 6-step
10.4 s/step against 6.2 s/step over the stage's 87 steps, both float32 on one AVX2-only 2-core machine).

    python bench/llm_cost.py --model models/.cache/gemma-3-270m-q4_k_m.gguf [--n 64] [--steps 6]
    python bench/llm_cost.py --plain --steps 12   # the shared-prompt-prefix training step vs trl's plain one

(`bench/forum_gemma.py` assembles that file from its packages.) Writes bench/results/llm_cost.json.

`--plain` adds the baseline trained by trl's own SFTTrainer step, which runs every row's whole prompt, against
the stage's SharedPrefixSFTTrainer, which runs the prompts' common beginning once per batch
(finsent/training/lora.py). Measured 2026-12-07 at batch 8, 12 steps (bench/results/llm_prefix.json): 4.66 vs
7.59 s a step, the plain step 1.63x the shared one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

BASELINE = "params.yaml llm"


def measure(ref: str, hp, train_df, score_texts, steps: int, seed: int, share_prefix: bool = True) -> dict:
    from finsent.inference.causal_lm import load_causal_lm, score_labels
    from finsent.training.lora import add_lora, sft_train

    start = time.perf_counter()
    model, tokenizer = load_causal_lm(ref, quantization=None, dtype="float32")
    load_s = time.perf_counter() - start
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    score_labels(model, tokenizer, score_texts[:8], batch_size=8)   # warm-up
    start = time.perf_counter()
    score_labels(model, tokenizer, score_texts, batch_size=16)
    score_rows_per_s = len(score_texts) / (time.perf_counter() - start)
    model = add_lora(model, hp.lora, quantized=False, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        trained = sft_train(model, tokenizer, train_df, None, hp, work_dir=Path(tmp) / "w", log_dir=Path(tmp) / "runs",
                            live_dir=Path(tmp) / "live", max_steps=steps, share_prefix=share_prefix)
    return {"model": ref, "parameters_m": round(params_m, 1), "load_s": round(load_s, 1),
            "score_rows_per_s": round(score_rows_per_s, 2), "seconds_per_step": trained["seconds_per_step"],
            "steps": trained["steps"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="a causal LM reference to compare (repeatable)")
    ap.add_argument("--n", type=int, default=64, help="test rows scored per model")
    ap.add_argument("--steps", type=int, default=6, help="LoRA steps per model")
    ap.add_argument("--plain", action="store_true",
                    help="also the baseline trained by trl's plain SFTTrainer, without the shared prompt prefix")
    ap.add_argument("--out", default=str(ROOT / "bench/results/llm_cost.json"))
    args = ap.parse_args(argv)

    import torch

    from finsent.core.params import load_params
    from finsent.data.splits import sample_rows
    from finsent.training.lora import llm_rows

    params = load_params(ROOT / "params.yaml")
    cfg, hp, seed = params.llm, params.llm_hp, params.seed
    stage_rows = llm_rows(cfg, params.evaluate.max_rows, seed, root=ROOT / "data/splits")
    tests, train_all = stage_rows.tests, stage_rows.train
    train_df = sample_rows(train_all, hp.batch_size * hp.grad_accum * args.steps, seed)
    scored_rows = len({t for frame in tests.values() for t in frame["text"]})   # score_frames: each text once
    score_texts = sample_rows(tests[cfg.eval_splits[0]], args.n, seed)["text"].tolist()
    steps_per_epoch = math.ceil(len(train_all) / (hp.batch_size * hp.grad_accum))

    rows = {}
    runs = [(BASELINE, hp.model, True)] + [(m, m, True) for m in args.model]
    if args.plain:
        runs.insert(1, (f"{BASELINE}, plain SFTTrainer", hp.model, False))
    for name, ref, share_prefix in runs:
        print(f"llm_cost: {name} ...", flush=True)
        r = measure(ref, hp, train_df, score_texts, args.steps, hp.seed, share_prefix=share_prefix)
        r["projected_stage_s"] = round(steps_per_epoch * hp.epochs * r["seconds_per_step"]
                                       + 2 * scored_rows / r["score_rows_per_s"])
        rows[name] = r
    base = rows[BASELINE]
    for r in rows.values():
        r["step_cost_vs_baseline"] = round(r["seconds_per_step"] / base["seconds_per_step"], 2)
        r["score_cost_vs_baseline"] = round(base["score_rows_per_s"] / r["score_rows_per_s"], 2)
    print(f"\nbaseline = {BASELINE} ({hp.model}), float32, {torch.get_num_threads()} threads; projection: "
          f"{steps_per_epoch} steps x {hp.epochs} epoch(s) + base and adapter scoring of {scored_rows} rows\n")
    print(f"{'model':<48} {'params M':>9} {'s/step':>8} {'x':>6} {'rows/s':>8} {'x':>6} {'stage s':>8}")
    for name, r in rows.items():
        print(f"{name[:48]:<48} {r['parameters_m']:>9.1f} {r['seconds_per_step']:>8.2f} {r['step_cost_vs_baseline']:>6.2f} "
              f"{r['score_rows_per_s']:>8.2f} {r['score_cost_vs_baseline']:>6.2f} {r['projected_stage_s']:>8}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"baseline": BASELINE, "hp_set": cfg.hp_set, "batch_size": hp.batch_size,
                                          "grad_accum": hp.grad_accum, "epochs": hp.epochs, "dtype": "float32",
                                          "threads": torch.get_num_threads(), "steps_per_epoch": steps_per_epoch,
                                          "scored_rows": scored_rows, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
