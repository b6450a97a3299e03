"""Stage train_student: a named workflow's student, trained on its teacher's labels.

`python stages/train_student.py --workflow forum` reads data/labelled_forum/pool.csv (the label stage's
teacher-labelled pool, each row with its teacher's id) and trains `workflows.forum.student`: an encoder
fine-tuned end to end (`kind: encoder`, early-stopping on a held-out part of the pool), or a head on frozen
embeddings (`kind: embedding_head`, embeddings cached by content under `label.cache_dir`). Writes
models/forum_student/ (with its model card), runs/forum_student/ (TensorBoard), metrics/forum/live/train/
(DVCLive) and metrics/forum/train.json. The logic is finsent.training.student.train_student.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.paths import (MODELS_DIR, RUNS_DIR, student_dir, workflow_labelled_dir,  # noqa: E402
                                workflow_metrics_dir)
from finsent.core.workflow_args import load_workflow, workflow_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = workflow_parser(__doc__, required=True).parse_args(argv)
    params, flow = load_workflow("train_student", args)  # validated before anything heavy is imported

    from finsent.core.io import read_interim, write_metrics
    from finsent.training.student import HEADLINE, train_student

    labelled = read_interim(workflow_labelled_dir(args.workflow) / "pool.csv")
    out = student_dir(args.workflow)
    teachers = sorted(set(labelled["teacher"]))  # the label stage writes its teacher's id on every row
    if len(teachers) != 1:
        raise SystemExit(f"train_student: {workflow_labelled_dir(args.workflow) / 'pool.csv'} has rows of "
                         f"{len(teachers)} teachers ({teachers}); rerun the label stage")
    runs_dir, live_dir = RUNS_DIR / out.name, workflow_metrics_dir(args.workflow) / "live" / "train"
    work_dir = MODELS_DIR / ".checkpoints" / out.name
    for stale in (out, runs_dir, live_dir, work_dir):
        shutil.rmtree(stale, ignore_errors=True)
    report = train_student(labelled, flow.student, out, seed=params.seed, cache_dir=flow.label.cache_dir,
                           teacher=teachers[0], runs_dir=runs_dir, live_dir=live_dir, work_dir=work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    write_metrics(report, workflow_metrics_dir(args.workflow) / "train.json", HEADLINE)
    fit = {k: v for k, v in report.items() if k.endswith("_vs_teacher")}
    print(f"train_student {args.workflow}: {flow.student.kind} on {report['train_rows']} rows from "
          f"{report['teacher']}; agreement with the teacher {fit} -> {out}")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("train_student"):
        raise SystemExit(main())
