"""Labelling a pool of posts with a teacher: draw the pool, gate the cost, label, account for it.

The label stage is argument parsing and file I/O around :func:`label_pool`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from finsent.core.labelset import LABELS
from finsent.core.schema import CompareSection
from finsent.evaluation.metrics import agreement, coverage_table
from finsent.teachers.answers import Answer
from finsent.teachers.cache import LabelCache
from finsent.teachers.cost import usage_totals, write_ledger

# What `dvc exp show` compares of the label report: how many posts got a label, how many were quarantined,
# and (where the pool has gold) the teacher's accuracy. Cache hits and this run's spend are facts of a run.
HEADLINE = ("labelled", "quarantined", "agreement_with_gold.accuracy")


class BudgetExceeded(RuntimeError):
    """The estimate for the posts not yet answered is above ``label.max_cost_usd``."""


@dataclass
class LabelRun:
    labelled: pd.DataFrame     # id, text, label, confidence, p_<label>, teacher
    quarantine: pd.DataFrame   # id, text, status, reason
    summary: dict[str, Any]    # metrics/label.json
    coverage: pd.DataFrame     # metrics/label_coverage.csv
    ledger: Path


def draw_pool(source: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """``n`` posts drawn with the seed (not stratified: a real pool's labels are unknown)."""
    n = len(source) if n is None else min(int(n), len(source))
    return source.sample(n=n, random_state=seed).reset_index(drop=True)


def best_teacher_spec(compare_json: str | Path, section: CompareSection) -> tuple[str, Any, dict[str, int]]:
    """``label.teacher: best``: (candidate name, its spec, the gold sample's label counts) from the
    compare stage's result file and the compare section that defines the candidates."""
    path = Path(compare_json)
    if not path.is_file():
        raise ValueError(f"{path}: no compare result; run the compare stage first (dvc repro)")
    result = json.loads(path.read_text(encoding="utf-8"))
    best = result.get("best")
    if best not in section.candidates:
        raise ValueError(f"{path}: best candidate {best!r} is not in the compare candidates "
                         f"({', '.join(section.candidates)}); rerun compare")
    return best, section.candidates[best], result.get("gold", {}).get("labels") or {}


def label_shares(counts: dict[str, int]) -> dict[str, float]:
    """Each label's share of ``counts`` (label -> rows), rounded for metrics."""
    total = max(1, sum(counts.get(lab, 0) for lab in LABELS))
    return {lab: round(counts.get(lab, 0) / total, 4) for lab in LABELS}


def answer_frame(pool: pd.DataFrame, answers: list[Answer]) -> pd.DataFrame:
    rows = []
    for (_, row), a in zip(pool.iterrows(), answers):
        conf = a.confidence or {}
        rows.append({"id": row["id"], "text": row["text"], "label": a.label, "status": a.status, "reason": a.reason,
                     "confidence": round(a.top_confidence, 5) if conf else None,
                     **{f"p_{lab}": round(conf[lab], 5) if conf else None for lab in LABELS}})
    return pd.DataFrame(rows)


def label_pool(teacher, name: str, pool: pd.DataFrame, cache: LabelCache, *, cache_dir: str | Path,
               max_cost_usd: float | None = None, reference_labels: dict[str, int] | None = None,
               log=print) -> LabelRun:
    """Label ``pool`` (id, text, and gold ``label`` used only to measure the teacher; empty for an
    unlabelled pool) with ``teacher``. ``reference_labels``: label counts of human gold posts (the compare
    sample), reported next to the teacher's label shares."""
    texts = pool["text"].tolist()
    gold = [g if g in LABELS else None for g in pool["label"].tolist()]
    write_ledger(cache, cache_dir)  # a killed earlier run's spend shows up even if this one stops early
    estimate = teacher.estimate(texts, cache)
    if estimate is not None:
        log(f"label: {estimate['cached']} of {len(texts)} posts cached; estimate for the other {estimate['rows']}: "
            f"~{estimate['prompt_tokens']:,} prompt + {estimate['completion_tokens']:,} completion tokens, "
            f"${estimate['usd']:.4f} ({estimate['mode']}; list price {estimate['price_per_1m']} USD per 1M tokens in, out)")
        if max_cost_usd is not None and estimate["usd"] > float(max_cost_usd):
            raise BudgetExceeded(f"the estimate ${estimate['usd']:.2f} exceeds label.max_cost_usd={max_cost_usd}; "
                                 f"raise it (dvc exp run -S label.max_cost_usd=...) or label fewer posts "
                                 f"(label.pool.n)")
    start = time.perf_counter()
    answers = teacher.label(texts, cache)
    seconds = time.perf_counter() - start

    frame = answer_frame(pool, answers)
    labelled = frame[frame["status"] == "ok"].drop(columns=["status", "reason"]).assign(teacher=teacher.teacher_id)
    quarantine = frame[frame["status"] != "ok"][["id", "text", "status", "reason"]]
    fresh = [a for a in answers if not a.cached]
    per_label = {lab: int((labelled["label"] == lab).sum()) for lab in LABELS}
    summary = {
        "teacher": name, "teacher_id": teacher.teacher_id, "rows": len(pool),
        "labelled": int((frame["status"] == "ok").sum()),
        "per_label": per_label, "label_share": label_shares(per_label),
        "quarantined": int((frame["status"] == "quarantined").sum()),
        "missing": int((frame["status"] == "missing").sum()),
        "failed": int((frame["status"] == "failed").sum()),
        "cache_hits": len(answers) - len(fresh),
        "requests": teacher.stats["requests"], "retries": teacher.stats["retries"],
        **usage_totals(fresh),
        "estimated_cost_usd": estimate["usd"] if estimate else 0.0,
        "seconds": round(seconds, 2),
        "posts_per_second": round(len(fresh) / seconds, 2) if fresh and seconds > 0 and name != "gold" else None,
        "agreement_with_gold": agreement(gold, [a.label for a in answers]),
    }
    if reference_labels:
        summary["gold_sample_label_share"] = label_shares(reference_labels)
    this_run = [r for r in cache.spend_by_run() if r["run_id"] == cache.run_id]
    summary["possibly_billed_usd"] = round(sum(r["possibly_billed_usd"] for r in this_run), 6)
    coverage = pd.DataFrame(coverage_table(gold, [a.label for a in answers], [a.top_confidence for a in answers]))
    return LabelRun(labelled, quarantine, summary, coverage, write_ledger(cache, cache_dir))
