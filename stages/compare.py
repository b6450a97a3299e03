"""Stage compare: candidate teachers zero-shot on a gold sample; the best by `compare.metric`.

The gold sample is drawn from `compare.gold` (the tweets' *validation* split by default: choosing a
teacher is model choice, so the frozen test sets stay out of it). OpenAI-compatible candidates
share the label stage's answer cache, so a re-run pays for nothing twice. Writes
metrics/compare.json, metrics/compare.md and metrics/compare.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import METRICS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", default=str(METRICS_DIR))
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before anything heavy is imported

    from finsent.core.io import write_json
    from finsent.data.splits import load_split, sample_rows
    from finsent.evaluation.plots import model_comparison_figure
    from finsent.teachers.cache import LabelCache
    from finsent.teachers.compare import compare, compare_markdown
    from finsent.teachers.cost import write_ledger

    cfg = params.compare
    sample = sample_rows(load_split(cfg.gold.split, cfg.gold.part), cfg.gold.n, params.seed)
    cache = LabelCache.in_dir(params.label.cache_dir)
    try:
        result = compare(cfg.candidates, sample["text"].tolist(), sample["label"].tolist(), cache,
                         params.label.prices, metric=cfg.metric)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        write_ledger(cache, params.label.cache_dir)  # OpenAI candidates spend too
        cache.close()
    result["gold"] = {**cfg.gold.model_dump(), "n": len(sample)}
    out = Path(args.metrics_dir)
    write_json(result, out / "compare.json")
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
