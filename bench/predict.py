"""Benchmark: `finsent predict` against the ways a careful user would run the same model without it.

Same posts, same fine-tuned model, same thread count, one run. Baselines, each reading the CSV and
writing a CSV like `finsent predict` does, with `top_k=None` (the three probabilities `finsent predict`
writes) and `truncation=True` (a long post cannot crash it):

  pipeline batch 1     `transformers.pipeline("text-classification")` with its defaults (batch size 1)
  pipeline batch 64    the same pipeline with `batch_size=64`
  optimum ort fp32     Optimum's ONNX Runtime model (`optimum.onnxruntime.ORTModelForSequenceClassification`,
                       exported from the same checkpoint) through the same pipeline, `batch_size=64`
  optimum ort int8     the same, dynamically quantized to int8 by Optimum's `ORTQuantizer`

Then `finsent predict` on each backend: PyTorch float32, PyTorch with `--dtype auto` (bfloat16 where the
CPU has it natively: the default), ONNX Runtime fp32 and int8, and int8 batched (faster, but a post's
answer then depends on its batch). Every arm's ratio is against the *best* baseline of this run; "same
label" is against `pipeline batch 1` (the float32 reference). The goal for the default: >= 3x the best
baseline at >= 99.5% same labels.

Optimum 2.x (optimum-onnx) needs transformers < 4.58 while finsent runs on transformers 5, so the Optimum
arms run in their own environment: `bash bench/optimum_env.sh` makes it (bench/.venv-optimum, sharing this
venv's torch); without it they are reported as skipped.

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
OPTIMUM_PYTHON = ROOT / "bench/.venv-optimum/bin/python"
REFERENCE = "pipeline batch 1"  # "same label" is measured against this float32 arm
DEFAULT = "finsent torch auto (default)"  # what `finsent predict` runs without --model / --dtype
# arm -> (how it loads, options); the model paths come from the command line
ARMS = {
    REFERENCE: ("pipeline", {"batch_size": 1}),
    "pipeline batch 64": ("pipeline", {"batch_size": 64}),
    "optimum ort fp32": ("optimum", {"batch_size": 64, "file": "model.onnx"}),
    "optimum ort int8": ("optimum", {"batch_size": 64, "file": "model_quantized.onnx"}),
    "finsent torch fp32": ("finsent", {"model": "torch", "dtype": "float32"}),
    DEFAULT: ("finsent", {"model": "torch", "dtype": "auto"}),
    "finsent onnx fp32": ("finsent", {"model": "onnx_fp32"}),
    "finsent onnx int8": ("finsent", {"model": "onnx_int8"}),
    "finsent onnx int8 batched": ("finsent", {"model": "onnx_int8", "batch_size": 64, "force_batch": True}),
}
BASELINES = [name for name, (how, _) in ARMS.items() if how != "finsent"]
SAME_LABEL_GOAL = 0.995
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
    if how in ("pipeline", "optimum"):
        from transformers import AutoTokenizer, pipeline
        if how == "optimum":
            from optimum.onnxruntime import ORTModelForSequenceClassification
            model = ORTModelForSequenceClassification.from_pretrained(args.optimum_dir, file_name=opts["file"])
            pipe = pipeline("text-classification", model=model,
                            tokenizer=AutoTokenizer.from_pretrained(args.optimum_dir), device=-1)
        else:
            pipe = pipeline("text-classification", model=args.torch_model, device=-1)
        batch = opts["batch_size"]

        def once(out: Path) -> None:
            posts = pd.read_csv(args.input, dtype=str, keep_default_na=False)[args.text_column].tolist()
            scores = pipe(posts, top_k=None, truncation=True, batch_size=batch)
            rows = [{"label": s[0]["label"], **{f"p_{d['label']}": d["score"] for d in s}} for s in scores]
            pd.DataFrame(rows).to_csv(out, index=False)

        pipe(texts.head(64).tolist(), top_k=None, truncation=True, batch_size=batch)
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


def prepare_optimum(model_dir: str, out: str) -> None:
    """In the Optimum environment: export the checkpoint with Optimum and quantize it with its ORTQuantizer
    (dynamic int8, the AVX-512 VNNI config where the CPU has it, else AVX2)."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    model = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    config = (AutoQuantizationConfig.avx512_vnni if "avx512_vnni" in flags else AutoQuantizationConfig.avx2)(
        is_static=False, per_channel=False)
    ORTQuantizer.from_pretrained(out).quantize(save_dir=out, quantization_config=config)


def optimum_unavailable(args, optimum_dir: str, passthrough: list[str]) -> str | None:
    """Export and quantize the model in the Optimum environment; None when done, else why not."""
    if not Path(args.optimum_python).exists():
        return f"no Optimum environment at {args.optimum_python}; make it with `bash bench/optimum_env.sh`"
    print("preparing the Optimum arms (export + ORTQuantizer) ...", file=sys.stderr, flush=True)
    proc = subprocess.run([args.optimum_python, __file__, f"--prepare-optimum={optimum_dir}", *passthrough],
                          capture_output=True, text=True, cwd=ROOT)
    return f"Optimum export failed: {proc.stderr.strip().splitlines()[-1:]}" if proc.returncode else None


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
    ap.add_argument("--optimum-python", default=str(OPTIMUM_PYTHON),
                    help="the interpreter of the Optimum environment (made by bench/optimum_env.sh)")
    ap.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    ap.add_argument("--optimum-dir", help=argparse.SUPPRESS)  # internal: Optimum's export of --torch-model
    ap.add_argument("--prepare-optimum", help=argparse.SUPPRESS)  # internal: export + quantize into this dir
    args = ap.parse_args()

    if args.prepare_optimum:
        prepare_optimum(args.torch_model, args.prepare_optimum)
        return
    if args.arm:
        print(json.dumps(run_arm(args.arm, args)))
        return
    for path in (args.torch_model, args.onnx_fp32, args.onnx_int8):
        if not Path(path).exists():
            sys.exit(f"{path} not found: run `dvc repro export` first (or pass --torch-model / --onnx-*)")
    names = list(dict.fromkeys([REFERENCE, *(a.strip() for a in args.arms.split(","))]))
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                   if k in ("input", "text_column", "torch_model", "onnx_fp32", "onnx_int8", "repeats", "threads")
                   and v is not None]
    results, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="finsent-optimum-") as optimum_dir:
        if any(ARMS[n][0] == "optimum" for n in names):
            why = optimum_unavailable(args, optimum_dir, passthrough)
            if why:
                skipped.update({n: why for n in names if ARMS[n][0] == "optimum"})
                names = [n for n in names if n not in skipped]
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            python = args.optimum_python if ARMS[name][0] == "optimum" else sys.executable
            proc = subprocess.run([python, __file__, "--arm", name, f"--optimum-dir={optimum_dir}", *passthrough],
                                  capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                sys.exit(f"arm {name!r} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    import pandas as pd
    texts = pd.read_csv(args.input, dtype=str, keep_default_na=False)[args.text_column].tolist()
    gpt_usd, price = gpt_cost_per_million(texts)
    reference = results[REFERENCE]
    best = max((n for n in results if n in BASELINES), key=lambda n: results[n]["posts_per_s"])
    n = reference["posts"]
    print(f"\n{n} posts from {args.input}; model {args.torch_model}; median of {args.repeats} runs per arm; "
          f"threads: {args.threads or 'library default'}; {os.cpu_count()} CPUs")
    print(f"best baseline: {best} ({results[best]['posts_per_s']:.1f} posts/s); same label: vs {REFERENCE}")
    print(f"{'arm':<30} {'posts/s':>8} {'vs best base':>13} {'same label':>11} {'peak RSS':>9} {'load':>6} "
          f"{'USD / 1M posts':>15}")
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["labels"], reference["labels"])) / n
        usd = args.usd_per_hour * 1e6 / r["posts_per_s"] / 3600
        r.update(ratio=r["posts_per_s"] / results[best]["posts_per_s"], same_label_as_reference=same,
                 usd_per_1m_posts=usd)
        print(f"{name:<30} {r['posts_per_s']:8.1f} {r['ratio']:12.2f}x {same:10.2%} {r['peak_rss_mb']:7.0f}MB "
              f"{r['load_s']:5.1f}s {usd:15.4f}")
    for name, why in skipped.items():
        print(f"{name:<30} skipped: {why}")
    faithful = [b for b in results if b in BASELINES and results[b]["same_label_as_reference"] >= SAME_LABEL_GOAL]
    best_faithful = max(faithful, key=lambda b: results[b]["posts_per_s"])
    if DEFAULT in results:
        d = results[DEFAULT]
        met = d["ratio"] >= 3 and d["same_label_as_reference"] >= SAME_LABEL_GOAL
        print(f"\ngoal (default >= 3x the best baseline at >= {SAME_LABEL_GOAL:.1%} same labels): {d['ratio']:.2f}x "
              f"{best} at {d['same_label_as_reference']:.2%} -> {'met' if met else 'NOT met'}; against the best "
              f"baseline that itself keeps >= {SAME_LABEL_GOAL:.1%} of the labels ({best_faithful}): "
              f"{d['posts_per_s'] / results[best_faithful]['posts_per_s']:.2f}x")
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
                                           "reference": REFERENCE, "best_baseline": best, "skipped": skipped,
                                           "best_baseline_keeping_labels": best_faithful,
                                           "arms": {k: {kk: vv for kk, vv in v.items() if kk != "labels"}
                                                    for k, v in results.items()}}, indent=2) + "\n")
    from finsent.evaluation.plots import throughput_figure
    throughput_figure({k: v["posts_per_s"] for k, v in results.items()}, best, args.plot,
                      title=f"{n} real posts, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    print(f"results: {args.json}, {args.plot}")


if __name__ == "__main__":
    main()
