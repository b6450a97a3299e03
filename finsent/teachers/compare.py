"""Teacher comparison: candidate teachers zero-shot on a gold sample, and the best one by a metric.

Candidates are local models (any model reference: a causal LM scored by label likelihood, an
encoder, the zero-shot embedding), OpenAI-compatible chat endpoints and recorded answers. One that
cannot run here (no key, no server) is reported as skipped with its reason. Every candidate gets a
bootstrap 95% interval for accuracy and macro-F1 (a gold sample of 100 posts decides little: the
report says so) and a cost per 1M posts at list price.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from finsent.core.labelset import LABELS
from finsent.core.schema import Candidate, LocalCandidate, OpenAICandidate, Price, RecordedCandidate
from finsent.evaluation.metrics import bootstrap_intervals, compute_metrics
from finsent.teachers.answers import TeacherUnavailable
from finsent.teachers.cache import LabelCache
from finsent.teachers.cost import estimate_cost, price_of, usage_totals
from finsent.teachers.factory import make_teacher

# What `dvc exp show` compares of compare's report (metrics/headline/compare.json): the winner and each
# candidate's score; intervals, confusion matrices and costs stay in the report (metrics/compare.json).
HEADLINE = ("best", "candidates.*.macro_f1")


AnyCandidate = LocalCandidate | OpenAICandidate | RecordedCandidate


def candidate_teacher(spec: AnyCandidate, prices: Mapping[str, Price]):
    return make_teacher(spec.teacher, spec, prices)


def cost_per_million(spec: AnyCandidate, texts: Sequence[str], prices: Mapping[str, Price]) -> float | None:
    """USD to label 1M posts like ``texts`` at list price with finsent's prompt (tokens estimated, see
    finsent.teachers.cost); 0 for a local model; None for recorded answers of a model without a price."""
    if isinstance(spec, LocalCandidate):
        return 0.0
    if isinstance(spec, RecordedCandidate) and spec.price_per_1m_posts_usd is not None:
        return float(spec.price_per_1m_posts_usd)
    if spec.model not in prices:
        return None if isinstance(spec, RecordedCandidate) else 0.0   # an unpriced endpoint: a local server
    usd = estimate_cost(texts, price_of(prices, spec.model))["usd"]
    return round(usd / max(1, len(texts)) * 1e6, 2)


def score_candidate(teacher, texts: Sequence[str], gold: Sequence[str], cache: LabelCache,
                    resamples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Accuracy counts an answer outside the label set, a missing recorded answer or a failed request as
    wrong; P/R/F1 and the confusion matrix are over the rows with a valid answer, whose share is
    `answered`; the intervals count every row (no answer = wrong)."""
    start = time.perf_counter()
    answers = teacher.label(texts, cache)
    wall = time.perf_counter() - start
    pairs = [(g, a.label) for g, a in zip(gold, answers) if a.label in LABELS]
    m = compute_metrics(*zip(*pairs)) if pairs else None
    fresh = [a for a in answers if not a.cached]
    statuses = [a.status for a in answers]
    return {
        "status": "ran", "teacher_id": teacher.teacher_id, "n": len(texts),
        "answered": round(len(pairs) / max(1, len(texts)), 4),
        "unanswered": {s: statuses.count(s) for s in sorted(set(statuses) - {"ok"})},
        "accuracy": round(sum(g == p for g, p in pairs) / max(1, len(texts)), 4),
        "macro_f1": m["macro_f1"] if m else 0.0, "weighted_f1": m["weighted_f1"] if m else 0.0,
        **bootstrap_intervals(gold, [a.label for a in answers], resamples, seed),
        "per_class_recall": {lab: v["recall"] for lab, v in m["per_class"].items()} if m else {},
        "confusion_matrix": m["confusion_matrix"] if m else None,
        **usage_totals(answers),
        "cost_usd_this_run": usage_totals(fresh)["cost_usd"],
        "wall_seconds": round(wall, 2), "cache_hits": len(answers) - len(fresh),
    }


def compare(candidates: Mapping[str, AnyCandidate], texts: Sequence[str], gold: Sequence[str],
            cache: LabelCache, prices: Mapping[str, Price], metric: str = "macro_f1",
            resamples: int = 1000, seed: int = 42, log=print) -> dict[str, Any]:
    """Every candidate on the gold sample (mappings are checked against the schema first)."""
    from pydantic import TypeAdapter

    candidates = {k: TypeAdapter(Candidate).validate_python(v) for k, v in candidates.items()}
    prices = {k: Price.model_validate(v) for k, v in prices.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, spec in candidates.items():
        try:
            results[name] = score_candidate(candidate_teacher(spec, prices), texts, gold, cache, resamples, seed)
            results[name]["cost_per_1m_posts_usd"] = cost_per_million(spec, texts, prices)
            r = results[name]
            log(f"compare: {name:<24} acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f} "
                f"{r.get('macro_f1_ci', '')}  answered {r['answered']:.1%}  ${r['cost_usd']:.4f}")
        except TeacherUnavailable as exc:
            results[name] = {"status": "skipped", "reason": str(exc)}
            log(f"compare: {name:<20} skipped: {exc}")
    ran = {k: v for k, v in results.items() if v["status"] == "ran"}
    if not ran:
        raise RuntimeError("compare: no candidate could run: " +
                           "; ".join(f"{k}: {v['reason']}" for k, v in results.items()))
    best = max(ran, key=lambda k: ran[k][metric])
    lo = ran[best].get(f"{metric}_ci", [None])[0]
    tied = sorted(k for k, v in ran.items() if k != best and lo is not None and v[metric] >= lo)
    return {"metric": metric, "best": best, "n": len(texts), "within_best_interval": tied,
            "candidates": results}


def _ci(r: Mapping[str, Any], key: str) -> str:
    ci = r.get(f"{key}_ci")
    return f"{r[key]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{r[key]:.4f}"


def _ms_per_post(r: Mapping[str, Any]) -> str:
    """Wall time per freshly answered post (a timing: it lives in the report, not in the compared metrics)."""
    fresh = r["n"] - r["cache_hits"]
    if not fresh or r["teacher_id"].startswith("recorded:") or "wall_seconds" not in r:
        return "—"
    return f"{1000 * r['wall_seconds'] / fresh:.2f}"


def compare_markdown(result: Mapping[str, Any]) -> str:
    lines = ["| candidate | teacher | accuracy [95% CI] | macro-F1 [95% CI] | recall neg / neu / pos | answered | "
             "USD per 1M posts | cost USD this sample | ms/post |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["candidates"].items():
        if r["status"] != "ran":
            lines.append(f"| {name} | skipped: {r['reason'][:80]} | — | — | — | — | — | — | — |")
            continue
        star = " **(best)**" if name == result["best"] else ""
        recall = " / ".join(f"{r['per_class_recall'].get(lab, 0):.2f}" for lab in LABELS)
        per_m = r.get("cost_per_1m_posts_usd")
        lines.append(f"| {name}{star} | {r['teacher_id'].split(':')[0]} | {_ci(r, 'accuracy')} | {_ci(r, 'macro_f1')} | "
                     f"{recall} | {r['answered']:.1%} | {'unknown' if per_m is None else f'{per_m:,.2f}'} | "
                     f"{r['cost_usd']:.4f} | "
                     f"{_ms_per_post(r)} |")
    n = result.get("n", 0)
    lines.append("")
    lines.append(f"n = {n} gold posts; intervals: percentile bootstrap, 95%. "
                 + ("With this few posts, candidates inside the best one's interval are not told apart: "
                    + (", ".join(result.get("within_best_interval") or []) or "none") + "." if n < 1000 else ""))
    return "\n".join(lines) + "\n"
