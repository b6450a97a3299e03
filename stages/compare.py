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

from finsent.compare import compare, compare_markdown  # noqa: E402
from finsent.config import METRICS_DIR, load_params, require  # noqa: E402
from finsent.data import load_split, sample_rows  # noqa: E402
from finsent.io import StageClock, write_json  # noqa: E402
from finsent.label import LabelCache  # noqa: E402
from finsent.plots import model_comparison_figure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", default=str(METRICS_DIR))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    cfg = require(params, "compare")
    label_cfg = params.get("label") or {}
    seed = int(params.get("seed", 42))
    gold_spec = cfg["gold"]
    sample = sample_rows(load_split(gold_spec["split"], gold_spec["part"]), gold_spec.get("n"), seed)
    cache = LabelCache(Path(label_cfg.get("cache_dir", "data/cache")) / "labels.sqlite")
    try:
        result = compare(cfg["candidates"], sample["text"].tolist(), sample["label"].tolist(), cache,
                         label_cfg.get("prices") or {}, metric=cfg.get("metric", "macro_f1"))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        cache.close()
    result["gold"] = {**gold_spec, "n": len(sample)}
    out = Path(args.metrics_dir)
    write_json(result, out / "compare.json")
    (out / "compare.md").write_text(compare_markdown(result), encoding="utf-8")
    ran = {k: {"gold": v} for k, v in result["candidates"].items() if v["status"] == "ran"}
    model_comparison_figure(ran, out / "compare.png", metric=result["metric"])
    print(compare_markdown(result))
    print(f"compare: best teacher by {result['metric']}: {result['best']}")
    return 0


if __name__ == "__main__":
    with StageClock("compare"):
        raise SystemExit(main())
