"""Stage train_teacher: fine-tune the larger encoder teacher (params.yaml `encoder_teacher`, by default
all-mpnet-base-v2) on the rows the train stage learns from, then write its class probabilities on those
rows (the soft targets of knowledge distillation, for hp sets with distill_weight > 0) and on the test
parts of train.splits (the model `encoder_teacher` in evaluate, its own row in the results).

It is a frozen stage: fine-tuning a 110M-parameter encoder takes ~30 min on a 2-core CPU, so `dvc repro`
keeps its outputs. Those are its probabilities and reports, small files in git: the teacher's weights are
not kept (they live in a scratch folder while the stage runs). A frozen stage's DVC-cached output would be
missing from a fresh clone, and DVC stops `dvc repro` on a frozen stage with missing outputs. Retrain with
`python stages/train_teacher.py && dvc commit -f train_teacher` (DVC records the new outputs in dvc.lock;
`dvc unfreeze` cannot rewrite this dvc.yaml, whose stages are templated).

Outputs: data/teacher_encoder/soft_targets.csv and predictions/<split>.csv, metrics/live/train_teacher/
(DVCLive: the training curves), metrics/train_teacher.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import LIVE_DIR, METRICS_DIR, MODELS_DIR, SOFT_TARGETS, TEACHER_ENCODER_DIR  # noqa: E402

NAME = "encoder_teacher"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before torch / transformers are imported

    from finsent.core.io import write_csv, write_metrics
    from finsent.data.splits import test_rows, training_rows, validation_rows
    from finsent.evaluation.metrics import prediction_frame
    from finsent.inference.classifiers import load_classifier
    from finsent.training.encoder import train_encoder

    cfg, teacher, hp = params.train, params.encoder_teacher, params.teacher_hp
    train_df = training_rows(cfg, params.seed)  # the train stage's rows, so every one gets a soft target
    val_df = validation_rows(cfg, params.seed)
    print(f"teacher {teacher.model}, hp set '{teacher.hp_set}': train {len(train_df)} rows, val {len(val_df)}")

    work_dir = MODELS_DIR / ".checkpoints" / NAME   # scratch: checkpoints, the best model, TensorBoard events
    out_dir = work_dir / "best"
    for stale in (work_dir, TEACHER_ENCODER_DIR):
        shutil.rmtree(stale, ignore_errors=True)
    result = train_encoder(train_df, val_df, model_ref=teacher.model, hp=hp, hp_name=teacher.hp_set,
                           out_dir=out_dir, log_dir=work_dir / "runs", live_dir=LIVE_DIR / "train_teacher",
                           work_dir=work_dir, patience=cfg.early_stopping_patience, max_steps=cfg.max_steps)
    if not result.is_main_process:
        return 0
    model = load_classifier(str(out_dir))  # bfloat16 where the CPU multiplies it natively
    soft = prediction_frame(train_df, model.predict_proba(train_df["text"].tolist()), NAME)
    write_csv(soft.drop(columns=["text"]), SOFT_TARGETS)
    agreement = float((soft["pred"] == soft["label"]).mean())
    for split in cfg.splits:  # the test rows evaluate scores (all of them unless evaluate.max_rows)
        test = test_rows(split, params.evaluate.max_rows, params.seed)
        write_csv(prediction_frame(test, model.predict_proba(test["text"].tolist()), NAME),
                  TEACHER_ENCODER_DIR / "predictions" / f"{split}.csv")
    shutil.rmtree(work_dir, ignore_errors=True)
    write_metrics({**result.summary, "soft_targets_rows": len(soft), "train_accuracy": round(agreement, 4),
                   "inference_model": model.model_id}, METRICS_DIR / "train_teacher.json")
    print(f"teacher: best val macro-F1 {result.summary['val_macro_f1']}, train accuracy {agreement:.4f} "
          f"-> {TEACHER_ENCODER_DIR}")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("train_teacher"):
        raise SystemExit(main())
