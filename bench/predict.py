"""Benchmark: `finsent predict` against a plain `transformers.pipeline("text-classification")`.

Same posts, same fine-tuned model, same thread count, one run. Baseline: the pipeline with its
defaults (`top_k=None` so it returns the three probabilities `finsent predict` writes,
`truncation=True` so a long post cannot crash it), reading the CSV and writing a CSV like
`finsent predict` does. Then `finsent predict` on each backend: PyTorch float32, PyTorch with
`--dtype auto` (bfloat16 where the CPU has it natively: the default), ONNX Runtime fp32 and int8,
and int8 batched (faster, but a post's answer then depends on its batch).

Each arm runs in its own process (so peak memory is its own): load the model, warm up on 64 posts,
then time `--repeats` passes over the whole file (file in -> file out); posts/s is the median.
Costs per 1M posts: this machine at `--usd-per-hour` for the time the arm takes, against
gpt-4o-mini at its list price for posts of the same length with this project's prompt.

    python bench/predict.py [--input data/raw/twitter-financial-news-sentiment/sent_valid.csv] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "pipeline"
DEFAULT = "finsent torch auto (default)"  # what `finsent predict` runs without --model / --dtype
# arm -> (how it loads, options); the model paths come from the command line
ARMS = {
    BASELINE: ("pipeline", {}),
    "finsent torch fp32": ("finsent", {"model": "torch", "dtype": "float32"}),
    DEFAULT: ("finsent", {"model": "torch", "dtype": "auto"}),
    "finsent onnx fp32": ("finsent", {"model": "onnx_fp32"}),
    "finsent onnx int8": ("finsent", {"model": "onnx_int8"}),
    "finsent onnx int8 batched": ("finsent", {"model": "onnx_int8", "batch_size": 64, "force_batch": True}),
}
# USD per hour of this machine's equivalent: AWS m5.large (2 vCPU, 8 GiB) on-demand, us-east-1, Linux
DEFAULT_USD_PER_HOUR = 0.096


def run_arm(name: str, args) -> dict:
    """Inside the arm's own process: load, warm up, time the repeats; returns the measurements."""
    import pandas as pd

    how, opts = ARMS[name]
    paths = {"torch": args.torch_model, "onnx_fp32": args.onnx_fp32, "onnx_int8": args.onnx_int8}
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    texts = pd.read_csv(args.input, dtype=str, keep_default_na=False)[args.text_column]
    start = time.perf_counter()
    if how == "pipeline":
        from transformers import pipeline
        pipe = pipeline("text-classification", model=args.torch_model, device=-1)

        def once(out: Path) -> None:
            posts = pd.read_csv(args.input, dtype=str, keep_default_na=False)[args.text_column].tolist()
            scores = pipe(posts, top_k=None, truncation=True)
            rows = [{"label": s[0]["label"], **{f"p_{d['label']}": d["score"] for d in s}} for s in scores]
            pd.DataFrame(rows).to_csv(out, index=False)

        pipe(texts.head(64).tolist(), top_k=None, truncation=True)
    else:
        from finsent.core.runtime import set_threads
        from finsent.inference.classifiers import load_classifier
        from finsent.inference.stream import predict_file

        set_threads(args.threads)
        clf = load_classifier(paths[opts["model"]], dtype=opts.get("dtype", "auto"),
                              batch_size=opts.get("batch_size", 64))
        if opts.get("force_batch"):
            clf.batch_size = opts["batch_size"]  # override the export's pinned batch size of 1

        def once(out: Path) -> None:
            predict_file(clf, args.input, out, text_column=args.text_column, keep_columns=[], progress=False)

        clf.predict_proba(texts.head(64).tolist())
    load_s = time.perf_counter() - start
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            once(out)
            rates.append(len(texts) / (time.perf_counter() - t0))
        labels = pd.read_csv(out)["label"].str.lower().tolist()
    return {"arm": name, "posts": len(texts), "rates": rates, "posts_per_s": statistics.median(rates),
            "load_s": load_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "labels": labels}


def gpt_cost_per_million(texts, model: str = "gpt-4o-mini") -> tuple[float, tuple[float, float]]:
    """USD per 1M posts like these through the label stage's prompt, at params.yaml's list price."""
    from finsent.core.params import load_params
    from finsent.teachers.cost import estimate_cost, price_of

    price = price_of(load_params(ROOT / "params.yaml").label.prices, model)
    estimate = estimate_cost(texts, price)
    return estimate["usd"] / estimate["rows"] * 1e6, price


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(ROOT / "data/raw/twitter-financial-news-sentiment/sent_valid.csv"),
                    help="a CSV of real posts (default: the tweets' valid file, 2,388 posts)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--torch-model", default="models/encoder")
    ap.add_argument("--onnx-fp32", default="models/encoder_onnx/fp32")
    ap.add_argument("--onnx-int8", default="models/encoder_onnx/int8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for every arm (default: the libraries')")
    ap.add_argument("--usd-per-hour", type=float, default=DEFAULT_USD_PER_HOUR,
                    help="what this machine costs (default: AWS m5.large on-demand, 2 vCPU, $0.096/h)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    ap.add_argument("--json", default=str(ROOT / "bench/results/predict.json"), help="where the results go")
    ap.add_argument("--plot", default=str(ROOT / "bench/results/predict.png"), help="bar chart of posts/s per arm")
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = ap.parse_args()

    if args.arm:
        print(json.dumps(run_arm(args.arm, args)))
        return
    for path in (args.torch_model, args.onnx_fp32, args.onnx_int8):
        if not Path(path).exists():
            sys.exit(f"{path} not found: run `dvc repro export` first (or pass --torch-model / --onnx-*)")
    names = [a.strip() for a in args.arms.split(",")]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("input", "text_column", "torch_model", "onnx_fp32", "onnx_int8", "repeats", "threads")
                   and v is not None]
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--arm", name, *passthrough], capture_output=True, text=True,
                              cwd=ROOT)
        if proc.returncode:
            sys.exit(f"arm {name!r} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    import pandas as pd
    texts = pd.read_csv(args.input, dtype=str, keep_default_na=False)[args.text_column].tolist()
    gpt_usd, price = gpt_cost_per_million(texts)
    base = results[BASELINE]
    n = base["posts"]
    print(f"\n{n} posts from {args.input}; model {args.torch_model}; median of {args.repeats} runs per arm; "
          f"threads: {args.threads or 'library default'}; {os.cpu_count()} CPUs")
    print(f"{'arm':<30} {'posts/s':>8} {'vs pipeline':>12} {'same label':>11} {'peak RSS':>9} {'load':>6} "
          f"{'USD / 1M posts':>15}")
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["labels"], base["labels"])) / n
        usd = args.usd_per_hour * 1e6 / r["posts_per_s"] / 3600
        r.update(ratio=r["posts_per_s"] / base["posts_per_s"], same_label_as_baseline=same, usd_per_1m_posts=usd)
        print(f"{name:<30} {r['posts_per_s']:8.1f} {r['ratio']:11.2f}x {same:10.2%} {r['peak_rss_mb']:7.0f}MB "
              f"{r['load_s']:5.1f}s {usd:15.4f}")
    print(f"\nthis machine: ${args.usd_per_hour}/h (assumed; --usd-per-hour). gpt-4o-mini: ${price[0]}/1M input, "
          f"${price[1]}/1M output tokens (OpenAI list price, params.yaml label.prices, checked 2026-11) -> "
          f"${gpt_usd:.2f} per 1M posts of this length (${gpt_usd / 2:.2f} with the Batch API)")
    for name in dict.fromkeys([DEFAULT, max(results, key=lambda k: results[k]["posts_per_s"])]):
        if name in results:
            usd = results[name]["usd_per_1m_posts"]
            print(f"{name}: ${usd:.4f} per 1M posts ({gpt_usd / usd:.0f}x cheaper than gpt-4o-mini, "
                  f"{gpt_usd / 2 / usd:.0f}x than its Batch API)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"posts": n, "input": str(args.input), "repeats": args.repeats,
                                           "usd_per_hour": args.usd_per_hour, "gpt_4o_mini_usd_per_1m": gpt_usd,
                                           "arms": {k: {kk: vv for kk, vv in v.items() if kk != "labels"}
                                                    for k, v in results.items()}}, indent=2) + "\n")
    from finsent.evaluation.plots import throughput_figure
    throughput_figure({k: v["posts_per_s"] for k, v in results.items()}, BASELINE, args.plot,
                      title=f"{n} real posts, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    print(f"results: {args.json}, {args.plot}")


if __name__ == "__main__":
    main()
