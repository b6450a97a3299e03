"""Benchmark: `finsent predict` on one process against `finsent predict --engine ray` at 1 and 2 workers.

Same 200k-post file (real tweets cycled, bench/make_posts.py), same model, same machine, one run. Each arm
is the real command in its own process, timed end to end (what a user waits: start, model load, reading,
labelling, writing) and by the command's own summary (labelling throughput). Baseline: the local engine
with all the machine's cores as threads (what `finsent predict` does by default). Ray arms: N actors of
one thread each (`--workers N --threads 1`), a local Ray started by the command.

Ray's fixed cost per job is measured the same way on a 64-post file: end-to-end seconds of the Ray engine
minus the local engine's (Ray start, actor start, a model load per actor, the job's scheduling).

    python bench/scale.py [--rows 200000] [--model models/encoder] [--workers 1,2]

"labelling" posts/s is each command's own summary: the local engine's excludes its model load; the Ray
engine's counts from the job's start (actor start and a model load per actor included) to its last write.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "local engine"


def timed(cmd: list[str], summary: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TQDM_DISABLE": "1", "RAY_DEDUP_LOGS": "0"})
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(summary.read_text())
    return {"wall_s": wall, "rows": result["rows_predicted"], "end_to_end_posts_per_s": result["rows_predicted"] / wall,
            "labelling_posts_per_s": result["posts_per_s"], "labels": result["labels"]}


def arms(workers: list[int]) -> dict[str, list[str]]:
    out = {BASELINE: []}
    for n in workers:
        out[f"ray, {n} worker{'s' if n > 1 else ''}"] = ["--engine", "ray", "--workers", str(n), "--threads", "1"]
    return out


def run(model: str, posts: Path, tmp: Path, workers: list[int]) -> dict[str, dict]:
    results = {}
    for name, extra in arms(workers).items():
        print(f"running {name} on {posts.name} ...", file=sys.stderr, flush=True)
        out = tmp / (name.replace(" ", "_").replace(",", "") + ("" if extra else ".parquet"))
        summary = tmp / f"{out.name}.summary.json"
        cmd = [sys.executable, "-m", "finsent.cli", "predict", str(posts), "-o", str(out), "--model", model,
               "--keep-columns", "id", "--no-progress", "--summary", str(summary), *extra]
        results[name] = timed(cmd, summary)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--model", default="models/encoder",
                    help="any model finsent predict loads (default: finsent predict's, the fine-tuned encoder)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to measure")
    ap.add_argument("--json", default=str(ROOT / "bench/results/scale.json"))
    args = ap.parse_args()
    if not Path(args.model).exists() and args.model.startswith("models/"):
        sys.exit(f"{args.model} not found: run `dvc repro export` first (or pass --model)")
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="finsent-scale-") as tmp_name:
        tmp = Path(tmp_name)
        big, small = tmp / f"posts_{args.rows}.csv", tmp / "posts_64.csv"
        for path, rows in ((big, args.rows), (small, 64)):
            subprocess.run([sys.executable, str(ROOT / "bench/make_posts.py"), "--rows", str(rows), "-o", str(path)],
                           check=True, capture_output=True)
        overhead = run(args.model, small, tmp, workers[:1])
        results = run(args.model, big, tmp, workers)

    base = results[BASELINE]
    print(f"\n{args.rows} posts, model {args.model}, {os.cpu_count()} CPUs; ratios against the {BASELINE} "
          f"({base['end_to_end_posts_per_s']:.0f} posts/s end to end)")
    print(f"{'arm':<18} {'wall s':>8} {'posts/s e2e':>12} {'ratio':>7} {'posts/s labelling':>18} {'same counts':>12}")
    for name, r in results.items():
        r["ratio"] = r["end_to_end_posts_per_s"] / base["end_to_end_posts_per_s"]
        print(f"{name:<18} {r['wall_s']:8.1f} {r['end_to_end_posts_per_s']:12.1f} {r['ratio']:6.2f}x "
              f"{r['labelling_posts_per_s']:18.1f} {str(r['labels'] == base['labels']):>12}")
    ray_name = next(n for n in overhead if n != BASELINE)
    fixed = overhead[ray_name]["wall_s"] - overhead[BASELINE]["wall_s"]
    print(f"\nRay's fixed cost per job (64 posts, {ray_name}): {overhead[ray_name]['wall_s']:.1f} s end to end vs "
          f"{overhead[BASELINE]['wall_s']:.1f} s locally -> {fixed:.1f} s of overhead")
    if len(workers) > 1:
        ray_arms = [name for name in arms(workers) if name != BASELINE]
        one, many = results[ray_arms[0]], results[ray_arms[-1]]
        eff = many["labelling_posts_per_s"] / (one["labelling_posts_per_s"] * workers[-1] / workers[0])
        gain = many["labelling_posts_per_s"] / one["labelling_posts_per_s"]
        print(f"scaling {workers[0]} -> {workers[-1]} workers: {gain:.2f}x "
              f"labelling throughput ({eff:.0%} of linear)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": args.rows, "model": args.model, "cpus": os.cpu_count(),
                                           "baseline": BASELINE, "arms": results, "overhead_64_posts": overhead,
                                           "ray_fixed_cost_s": fixed}, indent=2) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
