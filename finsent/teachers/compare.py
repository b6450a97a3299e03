"""Teacher comparison: candidate teachers zero-shot on a gold sample, and the best one by a metric.

Candidates are local models (any model reference: a causal LM scored by label likelihood, an
encoder, the zero-shot embedding) and OpenAI-compatible chat endpoints. One that cannot run here
(no key, no server) is reported as skipped with its reason.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from finsent.core.labelset import LABELS
from finsent.core.schema import Candidate, LocalCandidate, OpenAICandidate, Price
from finsent.evaluation.metrics import compute_metrics
from finsent.teachers.answers import TeacherUnavailable
from finsent.teachers.cache import LabelCache
from finsent.teachers.cost import usage_totals
from finsent.teachers.factory import make_teacher


def candidate_teacher(spec: LocalCandidate | OpenAICandidate, prices: Mapping[str, Price]):
    return make_teacher(spec.teacher, spec, prices)


def score_candidate(teacher, texts: Sequence[str], gold: Sequence[str], cache: LabelCache) -> dict[str, Any]:
    """Accuracy counts an answer outside the label set (or a failed request) as wrong; P/R/F1 and the
    confusion matrix are over the rows with a valid answer, whose share is `answered`."""
    start = time.perf_counter()
    answers = teacher.label(texts, cache)
    wall = time.perf_counter() - start
    pairs = [(g, a.label) for g, a in zip(gold, answers) if a.label in LABELS]
    m = compute_metrics(*zip(*pairs)) if pairs else None
    fresh = [a for a in answers if not a.cached]
    return {
        "status": "ran", "teacher_id": teacher.teacher_id, "n": len(texts),
        "answered": round(len(pairs) / max(1, len(texts)), 4),
        "accuracy": round(sum(g == p for g, p in pairs) / max(1, len(texts)), 4),
        "macro_f1": m["macro_f1"] if m else 0.0, "weighted_f1": m["weighted_f1"] if m else 0.0,
        "per_class_recall": {lab: v["recall"] for lab, v in m["per_class"].items()} if m else {},
        "confusion_matrix": m["confusion_matrix"] if m else None,
        **usage_totals(answers),
        "cost_usd_this_run": usage_totals(fresh)["cost_usd"],
        "latency_ms_per_post": round(1000 * sum(a.latency_s for a in fresh) / len(fresh), 2) if fresh else None,
        "wall_seconds": round(wall, 2), "cache_hits": len(answers) - len(fresh),
    }


def compare(candidates: Mapping[str, LocalCandidate | OpenAICandidate], texts: Sequence[str], gold: Sequence[str],
            cache: LabelCache, prices: Mapping[str, Price], metric: str = "macro_f1",
            log=print) -> dict[str, Any]:
    """Every candidate on the gold sample (mappings are checked against the schema first)."""
    from pydantic import TypeAdapter

    candidates = {k: TypeAdapter(Candidate).validate_python(v) for k, v in candidates.items()}
    prices = {k: Price.model_validate(v) for k, v in prices.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, spec in candidates.items():
        try:
            results[name] = score_candidate(candidate_teacher(spec, prices), texts, gold, cache)
            r = results[name]
            log(f"compare: {name:<20} acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
                f"answered {r['answered']:.1%}  ${r['cost_usd']:.4f}")
        except TeacherUnavailable as exc:
            results[name] = {"status": "skipped", "reason": str(exc)}
            log(f"compare: {name:<20} skipped: {exc}")
    ran = {k: v for k, v in results.items() if v["status"] == "ran"}
    if not ran:
        raise RuntimeError("compare: no candidate could run: " +
                           "; ".join(f"{k}: {v['reason']}" for k, v in results.items()))
    best = max(ran, key=lambda k: ran[k][metric])
    return {"metric": metric, "best": best, "n": len(texts), "candidates": results}


def compare_markdown(result: Mapping[str, Any]) -> str:
    lines = ["| candidate | status | accuracy | macro-F1 | answered | tokens (in/out) | cost USD | ms/post |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["candidates"].items():
        if r["status"] != "ran":
            lines.append(f"| {name} | skipped: {r['reason'][:80]} | — | — | — | — | — | — |")
            continue
        star = " (best)" if name == result["best"] else ""
        lines.append(f"| {name}{star} | ran | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['answered']:.1%} | "
                     f"{r['prompt_tokens']}/{r['completion_tokens']} | {r['cost_usd']:.4f} | "
                     f"{r['latency_ms_per_post'] if r['latency_ms_per_post'] is not None else '—'} |")
    return "\n".join(lines) + "\n"
