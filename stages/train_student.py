"""Stage train_student: a named workflow's student on frozen features, trained on its teacher's labels.

`python stages/train_student.py --workflow forum` reads data/labelled_forum/pool.csv (the label stage's
teacher-labelled pool, each row with its teacher's id), embeds the posts with `workflows.forum.student.embedder` (cached by content
under `label.cache_dir`), fits the head and writes models/forum_student/ (with its model card) and
metrics/forum/train.json. The logic is finsent.training.student.train_student.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import student_dir, workflow_labelled_dir, workflow_metrics_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--workflow", required=True, help="a key of params.yaml `workflows`")
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before anything heavy is imported
    try:
        flow = params.workflow(args.workflow)
    except ValueError as exc:
        raise SystemExit(f"train_student: {exc}") from None

    from finsent.core.io import read_interim, write_metrics
    from finsent.training.student import HEADLINE, train_student

    labelled = read_interim(workflow_labelled_dir(args.workflow) / "pool.csv")
    out = student_dir(args.workflow)
    teachers = sorted(set(labelled["teacher"]))  # the label stage writes its teacher's id on every row
    if len(teachers) != 1:
        raise SystemExit(f"train_student: {workflow_labelled_dir(args.workflow) / 'pool.csv'} has rows of "
                         f"{len(teachers)} teachers ({teachers}); rerun the label stage")
    report = train_student(labelled, flow.student, out, seed=params.seed, cache_dir=flow.label.cache_dir,
                           teacher=teachers[0])
    write_metrics(report, workflow_metrics_dir(args.workflow) / "train.json", HEADLINE)
    print(f"train_student {args.workflow}: {report['train_rows']} rows from {report['teacher']}, "
          f"{report['features']} features, fit to the teacher {report['train_accuracy_vs_teacher']:.3f} -> {out}")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("train_student"):
        raise SystemExit(main())
