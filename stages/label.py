"""Stage label: label an unlabelled pool of posts with the teacher named by params.yaml `label.teacher`.

The pool is drawn reproducibly from `label.pool` (the tweets' train split by default) with its gold
labels held aside: they are used only to measure the teacher (agreement, Cohen's kappa, coverage
by confidence), never written next to the teacher's labels. Writes data/labelled/pool.csv (the
labelled rows), data/labelled/quarantine.csv (answers outside the label set, and requests that
failed after every retry, with the reason), metrics/label.json and metrics/label_coverage.csv.
The answer cache and the cost ledger live in `label.cache_dir` (outside DVC's outputs, kept across runs).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from finsent.config import METRICS_DIR, load_params, require  # noqa: E402
from finsent.data import load_split  # noqa: E402
from finsent.io import StageClock, write_csv, write_json  # noqa: E402
from finsent.label import (BatchPending, LabelCache, OpenAITeacher, TeacherUnavailable, agreement, cache_key,  # noqa: E402
                           coverage_table, estimate_cost, make_teacher, usage_totals)
from finsent.labels import LABELS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default="data/labelled")
    ap.add_argument("--metrics-dir", default=str(METRICS_DIR))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    cfg = require(params, "label")
    seed = int(params.get("seed", 42))
    source = load_split(cfg["pool"]["split"], cfg["pool"]["part"])
    n = min(int(cfg["pool"]["n"]), len(source))
    pool = source.sample(n=n, random_state=seed).reset_index(drop=True)  # not stratified: labels are unknown
    gold = pool["label"].tolist()
    name = cfg["teacher"]
    try:
        teacher = make_teacher(name, cfg.get(name) or {}, cfg.get("prices") or {}, gold)
    except TeacherUnavailable as exc:
        raise SystemExit(f"label: teacher '{name}' cannot run: {exc}") from None
    cache_dir = Path(cfg.get("cache_dir", "data/cache"))
    cache = LabelCache(cache_dir / "labels.sqlite")
    texts = pool["text"].tolist()

    estimate = None
    if isinstance(teacher, OpenAITeacher):
        missing = [t for t in texts if cache.get(cache_key(teacher.teacher_id, t)) is None]
        factor = 0.5 if teacher.mode == "batch" else 1.0  # the Batch API's discount
        estimate = estimate_cost(missing, (teacher.price[0] * factor, teacher.price[1] * factor))
        print(f"label: {len(texts) - len(missing)} of {len(texts)} posts cached; estimate for the other "
              f"{len(missing)}: ~{estimate['prompt_tokens']:,} prompt + {estimate['completion_tokens']:,} completion "
              f"tokens, ${estimate['usd']:.4f} ({teacher.mode}; list price {teacher.price} USD per 1M tokens in, out)")
        budget = cfg.get("max_cost_usd")
        if budget is not None and estimate["usd"] > float(budget):
            raise SystemExit(f"label: the estimate ${estimate['usd']:.2f} exceeds label.max_cost_usd={budget}; "
                             f"raise it (dvc exp run -S label.max_cost_usd=...) or label fewer posts (label.pool.n)")

    start = time.perf_counter()
    try:
        answers = teacher.label(texts, cache)
    except BatchPending as exc:
        raise SystemExit(f"label: {exc}") from None
    seconds = time.perf_counter() - start

    out = Path(args.out_dir)
    rows = []
    for (_, row), a in zip(pool.iterrows(), answers):
        conf = a.confidence or {}
        rows.append({"id": row["id"], "text": row["text"], "label": a.label, "status": a.status, "reason": a.reason,
                     "confidence": round(max(conf.values()), 5) if conf else None,
                     **{f"p_{lab}": round(conf[lab], 5) if conf else None for lab in LABELS}})
    frame = pd.DataFrame(rows)
    labelled = frame[frame["status"] == "ok"].drop(columns=["status", "reason"]).assign(teacher=teacher.teacher_id)
    write_csv(labelled, out / "pool.csv")
    write_csv(frame[frame["status"] != "ok"][["id", "text", "status", "reason"]], out / "quarantine.csv")

    fresh = [a for a in answers if not a.cached]
    summary = {
        "teacher": name, "teacher_id": teacher.teacher_id, "rows": len(pool),
        "labelled": int((frame["status"] == "ok").sum()),
        "per_label": {lab: int((labelled["label"] == lab).sum()) for lab in LABELS},
        "quarantined": int((frame["status"] == "quarantined").sum()),
        "failed": int((frame["status"] == "failed").sum()),
        "cache_hits": len(answers) - len(fresh),
        "requests": teacher.stats["requests"], "retries": teacher.stats["retries"],
        **usage_totals(fresh),
        "estimated_cost_usd": estimate["usd"] if estimate else 0.0,
        "seconds": round(seconds, 2),
        "posts_per_second": round(len(fresh) / seconds, 2) if fresh and seconds > 0 and name != "gold" else None,
        "agreement_with_gold": agreement(gold, answers),
    }
    write_json(summary, Path(args.metrics_dir) / "label.json")
    write_csv(pd.DataFrame(coverage_table(gold, answers)), Path(args.metrics_dir) / "label_coverage.csv")
    ledger = cache_dir / "ledger.csv"
    entry = pd.DataFrame([{"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "teacher_id": teacher.teacher_id,
                           "rows": len(pool), "new_answers": len(fresh), "requests": summary["requests"],
                           "prompt_tokens": summary["prompt_tokens"],
                           "completion_tokens": summary["completion_tokens"], "cost_usd": summary["cost_usd"]}])
    entry.to_csv(ledger, mode="a", header=not ledger.exists(), index=False)
    print(f"label: {summary['labelled']} labelled, {summary['quarantined']} quarantined, {summary['failed']} failed; "
          f"{summary['cache_hits']} from the cache; ${summary['cost_usd']:.4f} this run (ledger: {ledger})")
    cache.close()
    return 0


if __name__ == "__main__":
    with StageClock("label"):
        raise SystemExit(main())
