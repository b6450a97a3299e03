"""Stage label: label an unlabelled pool of posts with the teacher named by params.yaml `label.teacher`.

The pool is drawn reproducibly from `label.pool` (the tweets' train split by default) with its gold
labels held aside: they are used only to measure the teacher (agreement, Cohen's kappa, coverage
by confidence), never written next to the teacher's labels. Writes data/labelled/pool.csv (the
labelled rows), data/labelled/quarantine.csv (answers outside the label set, and requests that
failed after every retry, with the reason), metrics/label.json and metrics/label_coverage.csv.
The answer cache and the cost ledger live in `label.cache_dir` (outside DVC's outputs, kept across runs).
The logic is finsent.teachers.labelling.label_pool.

`--workflow forum` runs params.yaml `workflows.forum.label` (outputs under data/labelled_forum/ and
metrics/forum/). There `teacher: best` takes the candidate the workflow's compare stage named in its
compare.json, so a new winner relabels the pool; a pool without gold labels is labelled all the same,
and the teacher's label shares are put next to the humans' on the compare sample.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.paths import workflow_labelled_dir, workflow_metrics_dir  # noqa: E402
from finsent.core.workflow_args import load_workflow, workflow_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = workflow_parser(__doc__)
    ap.add_argument("--out-dir", default=None, help="default: data/labelled/ (data/labelled_<workflow>/)")
    ap.add_argument("--metrics-dir", default=None, help="default: metrics/ (metrics/<workflow>/)")
    args = ap.parse_args(argv)
    params, flow = load_workflow("label", args)  # validated before anything heavy is imported
    metrics_dir = Path(args.metrics_dir or workflow_metrics_dir(args.workflow))

    from finsent.core.io import write_csv, write_metrics
    from finsent.data.splits import load_split
    from finsent.teachers.answers import BatchPending, TeacherUnavailable
    from finsent.teachers.cache import LabelCache
    from finsent.teachers.factory import make_teacher
    from finsent.teachers.labelling import HEADLINE, BudgetExceeded, best_teacher_spec, draw_pool, label_pool

    cfg = flow.label
    pool = draw_pool(load_split(cfg.pool.split, cfg.pool.part), cfg.pool.n, params.seed)
    name, spec, reference = cfg.teacher, getattr(cfg, cfg.teacher, None), None
    if cfg.teacher == "best":
        try:
            name, spec, reference = best_teacher_spec(metrics_dir / "compare.json", flow.compare)
        except ValueError as exc:
            raise SystemExit(f"label: {exc}") from None
        print(f"label: teacher 'best' is {name} ({spec.teacher}), as compare named it")
    try:
        teacher = make_teacher(getattr(spec, "teacher", name), spec, cfg.prices, pool["label"].tolist())
    except TeacherUnavailable as exc:
        raise SystemExit(f"label: teacher '{name}' cannot run: {exc}") from None
    cache = LabelCache.in_dir(cfg.cache_dir)
    try:
        run = label_pool(teacher, name, pool, cache, cache_dir=cfg.cache_dir, max_cost_usd=cfg.max_cost_usd,
                         reference_labels=reference)
    except (BatchPending, BudgetExceeded, TeacherUnavailable) as exc:
        raise SystemExit(f"label: {exc}") from None
    finally:
        cache.close()

    out = Path(args.out_dir or workflow_labelled_dir(args.workflow))
    write_csv(run.labelled, out / "pool.csv")
    write_csv(run.quarantine, out / "quarantine.csv")
    write_metrics(run.summary, metrics_dir / "label.json", HEADLINE)
    write_csv(run.coverage, metrics_dir / "label_coverage.csv")
    s = run.summary
    print(f"label: {s['labelled']} labelled, {s['quarantined']} quarantined, {s['missing']} missing, "
          f"{s['failed']} failed; "
          f"{s['cache_hits']} from the cache; ${s['cost_usd']:.4f} this run (ledger: {run.ledger})")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("label"):
        raise SystemExit(main())
