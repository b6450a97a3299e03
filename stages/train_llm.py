"""Stage train_llm: LoRA fine-tune a causal LM (trl SFTTrainer) and score the adapter.

Reads params.yaml `llm` (+ the hp set named by llm.hp_set in `llm_hp_sets`). Trains on the
train part of llm.train_split (balanced FPB by default) minus any text of the test sets it is
scored on, with eval loss on its val part. Scores the adapter on the test parts of llm.eval_splits
(the same rows evaluate uses, and the same rows stage score_llm_base scores the base model on: the
"before" of this "after", a stage of its own so that a new LoRA recipe does not rescore the base),
writing models/llm/predictions/<split>.csv for the evaluate stage, the adapter (with its
model card: base model, max length, hp set, data fingerprint) to models/llm/adapter, TensorBoard
events to runs/llm/<hp_set>, DVCLive to metrics/live/train_llm/ (the DVC metrics: losses), and the run's
report to metrics/train_llm.json.
Runs unchanged under `accelerate launch` for multi-GPU data parallel.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import LIVE_DIR, METRICS_DIR, MODELS_DIR, RUNS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default=str(MODELS_DIR / "llm"))
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before torch / transformers are imported

    from accelerate import PartialState

    from finsent.core.cards import data_fingerprint, write_card
    from finsent.core.io import write_metrics
    from finsent.inference.causal_lm import load_causal_lm
    from finsent.inference.llm_scoring import score_to_predictions
    from finsent.training.lora import add_lora, llm_rows, merged_for_inference, sft_train

    cfg, hp, name = params.llm, params.llm_hp, params.llm.hp_set
    seed = params.seed
    out_dir = Path(args.out_dir)
    # Under `accelerate launch` every process trains (data parallel); only the main one scores and writes.
    main_process = PartialState().is_main_process
    if main_process:
        shutil.rmtree(out_dir, ignore_errors=True)

    rows = llm_rows(cfg, params.evaluate.max_rows, seed)  # evaluate's test rows; train rows share no test text
    tests, train_df, val_df, removed = rows.tests, rows.train, rows.val, rows.removed
    print(f"train_llm: hp set '{name}', model {hp.model}; {len(train_df)} train rows "
          f"({removed} removed: their text is in a test set), {len(val_df)} val rows")

    quantized = hp.quantization.load_in_4bit
    model, tokenizer = load_causal_lm(hp.model, quantization=hp.quantization, dtype=hp.dtype)
    summary: dict = {"hp_set": name, "model": hp.model, "quantized_4bit": quantized,
                     "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                     "train_rows_removed_as_test_text": removed}

    model = add_lora(model, hp.lora, quantized=quantized, gradient_checkpointing=hp.gradient_checkpointing,
                     seed=hp.seed)
    summary["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = sft_train(model, tokenizer, train_df, val_df, hp, work_dir=out_dir / "checkpoints",
                        log_dir=RUNS_DIR / "llm" / name, live_dir=LIVE_DIR / "train_llm", max_steps=cfg.max_steps)
    if not main_process:
        return 0
    summary.update(trained)
    model.save_pretrained(out_dir / "adapter")  # the LoRA adapter only, never merged into 4-bit weights
    tokenizer.save_pretrained(out_dir / "adapter")
    write_card(out_dir / "adapter", model_id=f"llm-{name}", kind="llm", base_model=hp.model,
               max_length=hp.max_length, dtype=summary["dtype"], quantization=hp.quantization.model_dump(),
               hp_set=name, data_fingerprint=data_fingerprint(train_df["text"], train_df["label"]),
               train_rows=len(train_df))
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    with merged_for_inference(model):
        summary.update(score_to_predictions(model, tokenizer, tests, name="lora", out_dir=out_dir / "predictions",
                                            batch_size=cfg.score_batch_size))
    write_metrics(summary, METRICS_DIR / "train_llm.json")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("train_llm"):
        raise SystemExit(main())
