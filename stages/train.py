"""Stage train: fine-tune the encoder classifier on the train splits named in params.yaml `train` (with an
hp set's distill_weight > 0, also on the probabilities of the train_teacher stage's larger encoder).

Outputs: models/encoder (best checkpoint + tokenizer + model card), runs/encoder/<hp_set>/ (TensorBoard),
metrics/live/train/ (DVCLive: metrics.json, the DVC metrics; plots/, the curves) and metrics/train.json
(the run's report).
Runs unchanged under `accelerate launch` / torchrun for multi-GPU data parallel.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import LIVE_DIR, METRICS_DIR, MODELS_DIR, RUNS_DIR, SOFT_TARGETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default=str(MODELS_DIR / "encoder"))
    ap.add_argument("--runs-dir", default=str(RUNS_DIR / "encoder"))
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before torch / transformers are imported

    from finsent.core.io import write_metrics
    from finsent.data.splits import training_rows, validation_rows
    from finsent.training.encoder import soft_targets_for, train_encoder

    cfg, hp = params.train, params.hp
    data_seed = params.seed  # the same rows the evaluate stage fits the baselines on
    train_df = training_rows(cfg, data_seed)
    val_df = validation_rows(cfg, data_seed)
    print(f"train: {len(train_df)} rows ({cfg.labels} labels), val: {len(val_df)} rows (gold) from "
          f"splits {cfg.splits}; hp set '{cfg.hp_set}': {hp.model_dump()}")

    soft = None
    if hp.distill_weight:  # knowledge distillation from the frozen train_teacher stage's probabilities
        soft = soft_targets_for(train_df, SOFT_TARGETS)
        print(f"distilling: weight {hp.distill_weight}, temperature {hp.distill_temperature}, teacher "
              f"probabilities from {SOFT_TARGETS}")

    out_dir = Path(args.out_dir)
    work_dir = MODELS_DIR / ".checkpoints" / out_dir.name
    for stale in (out_dir, work_dir):
        shutil.rmtree(stale, ignore_errors=True)
    result = train_encoder(train_df, val_df, model_ref=cfg.model, hp=hp, hp_name=cfg.hp_set, out_dir=out_dir,
                           log_dir=Path(args.runs_dir) / cfg.hp_set, live_dir=LIVE_DIR / "train", work_dir=work_dir,
                           patience=cfg.early_stopping_patience, max_steps=cfg.max_steps, soft_targets=soft)
    if result.is_main_process:
        write_metrics(result.summary, METRICS_DIR / "train.json")
        shutil.rmtree(work_dir, ignore_errors=True)
        print(f"best val macro-F1 {result.summary['val_macro_f1']} after {result.summary['epochs_run']} epochs "
              f"in {result.summary['train_seconds']} s -> {out_dir}")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("train"):
        raise SystemExit(main())
