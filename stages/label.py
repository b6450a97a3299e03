"""Stage label: label an unlabelled pool of posts with the teacher named by params.yaml `label.teacher`.

The pool is drawn reproducibly from `label.pool` (the tweets' train split by default) with its gold
labels held aside: they are used only to measure the teacher (agreement, Cohen's kappa, coverage
by confidence), never written next to the teacher's labels. Writes data/labelled/pool.csv (the
labelled rows), data/labelled/quarantine.csv (answers outside the label set, and requests that
failed after every retry, with the reason), metrics/label.json and metrics/label_coverage.csv.
The answer cache and the cost ledger live in `label.cache_dir` (outside DVC's outputs, kept across runs).
The logic is finsent.teachers.labelling.label_pool.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import LABELLED_DIR, METRICS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default=str(LABELLED_DIR))
    ap.add_argument("--metrics-dir", default=str(METRICS_DIR))
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before anything heavy is imported

    from finsent.core.io import write_csv, write_json
    from finsent.data.splits import load_split
    from finsent.teachers.answers import BatchPending, TeacherUnavailable
    from finsent.teachers.cache import LabelCache
    from finsent.teachers.factory import make_teacher
    from finsent.teachers.labelling import BudgetExceeded, draw_pool, label_pool

    cfg = params.label
    pool = draw_pool(load_split(cfg.pool.split, cfg.pool.part), cfg.pool.n, params.seed)
    try:
        teacher = make_teacher(cfg.teacher, getattr(cfg, cfg.teacher, None), cfg.prices, pool["label"].tolist())
    except TeacherUnavailable as exc:
        raise SystemExit(f"label: teacher '{cfg.teacher}' cannot run: {exc}") from None
    cache = LabelCache.in_dir(cfg.cache_dir)
    try:
        run = label_pool(teacher, cfg.teacher, pool, cache, cache_dir=cfg.cache_dir, max_cost_usd=cfg.max_cost_usd)
    except (BatchPending, BudgetExceeded, TeacherUnavailable) as exc:
        raise SystemExit(f"label: {exc}") from None
    finally:
        cache.close()

    out = Path(args.out_dir)
    write_csv(run.labelled, out / "pool.csv")
    write_csv(run.quarantine, out / "quarantine.csv")
    write_json(run.summary, Path(args.metrics_dir) / "label.json")
    write_csv(run.coverage, Path(args.metrics_dir) / "label_coverage.csv")
    s = run.summary
    print(f"label: {s['labelled']} labelled, {s['quarantined']} quarantined, {s['failed']} failed; "
          f"{s['cache_hits']} from the cache; ${s['cost_usd']:.4f} this run (ledger: {run.ledger})")
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("label"):
        raise SystemExit(main())
