"""Stage compare: candidate teachers zero-shot on a gold sample; the best by `compare.metric`.

`--workflow forum` runs params.yaml `workflows.forum.compare` instead (outputs under metrics/forum/).

The gold sample is drawn from `compare.gold` (the tweets' *validation* split by default: choosing a
teacher is model choice, so the frozen test sets stay out of it). OpenAI-compatible candidates
share the label stage's answer cache, so a re-run pays for nothing twice. Writes
metrics/compare.json, metrics/compare.md and metrics/compare.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.paths import workflow_metrics_dir  # noqa: E402
from finsent.core.workflow_args import load_workflow, workflow_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = workflow_parser(__doc__)
    ap.add_argument("--metrics-dir", default=None, help="default: metrics/ (metrics/<workflow>/)")
    args = ap.parse_args(argv)
    params, flow = load_workflow("compare", args)  # validated before anything heavy is imported

    from finsent.core.io import write_metrics
    from finsent.core.labelset import LABELS
    from finsent.data.splits import load_split, sample_rows
    from finsent.evaluation.plots import model_comparison_figure
    from finsent.teachers.cache import LabelCache
    from finsent.teachers.compare import HEADLINE, compare, compare_markdown
    from finsent.teachers.cost import write_ledger

    cfg, label = flow.compare, flow.label
    sample = sample_rows(load_split(cfg.gold.split, cfg.gold.part), cfg.gold.n, params.seed)
    cache = LabelCache.in_dir(label.cache_dir)
    try:
        result = compare(cfg.candidates, sample["text"].tolist(), sample["label"].tolist(), cache,
                         label.prices, metric=cfg.metric, resamples=cfg.bootstrap_resamples, seed=params.seed)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        write_ledger(cache, label.cache_dir)  # OpenAI candidates spend too
        cache.close()
    result["gold"] = {**cfg.gold.model_dump(), "n": len(sample),
                      "labels": {lab: int((sample["label"] == lab).sum()) for lab in LABELS}}
    out = Path(args.metrics_dir or workflow_metrics_dir(args.workflow))
    write_metrics(result, out / "compare.json", HEADLINE)
    (out / "compare.md").write_text(compare_markdown(result), encoding="utf-8")
    ran = {k: {"gold": v} for k, v in result["candidates"].items() if v["status"] == "ran"}
    model_comparison_figure(ran, out / "compare.png", metric=result["metric"])
    print(compare_markdown(result))
    print(f"compare: best teacher by {result['metric']}: {result['best']}")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("compare"):
        raise SystemExit(main())
