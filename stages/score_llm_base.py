"""Stage score_llm_base: the causal LM zero-shot, before LoRA (evaluate's model llm_base).

Loads the base model of the hp set named by llm.hp_set (its `model`, `quantization` and `dtype`, the only
hp-set keys this stage reads: a new learning rate, rank or epoch count does not rescore the base) and
scores it on the test parts of llm.eval_splits, the rows evaluate reads and train_llm scores its adapter
on. Writes models/llm_base/predictions/<split>.csv for the evaluate stage and metrics/score_llm_base.json
(accuracy per split; its time goes to metrics/timing/score_llm_base.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import METRICS_DIR, MODELS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default=str(MODELS_DIR / "llm_base" / "predictions"))
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before torch / transformers are imported

    import shutil

    from finsent.core.io import write_metrics
    from finsent.inference.causal_lm import load_causal_lm
    from finsent.inference.llm_scoring import llm_test_rows, score_to_predictions

    cfg, hp = params.llm, params.llm_hp
    out_dir = Path(args.out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    tests = llm_test_rows(cfg.eval_splits, params.evaluate.max_rows, params.seed)
    model, tokenizer = load_causal_lm(hp.model, quantization=hp.quantization, dtype=hp.dtype)
    print(f"score_llm_base: {hp.model} (hp set '{cfg.hp_set}') zero-shot on "
          + ", ".join(f"{split} ({len(frame)} rows)" for split, frame in tests.items()))
    report = {"model": hp.model, "quantized_4bit": hp.quantization.load_in_4bit,
              "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    report.update(score_to_predictions(model, tokenizer, tests, name="base", out_dir=out_dir,
                                       batch_size=cfg.score_batch_size))
    write_metrics(report, METRICS_DIR / "score_llm_base.json")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("score_llm_base"):
        raise SystemExit(main())
