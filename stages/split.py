"""Stage split: data/interim/<dataset>.csv -> data/splits/<split>/{train,val,test,dropped}.csv + report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.io import StageClock, read_interim, write_csv, write_json  # noqa: E402
from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import INTERIM_DIR, METRICS_DIR, SPLITS_DIR  # noqa: E402
from finsent.data.split import exclude_other_tests, make_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default=str(SPLITS_DIR))
    ap.add_argument("--metrics", default=str(METRICS_DIR / "split.json"))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    report, results = {}, {}
    for name, spec in params.splits.items():
        rows = read_interim(INTERIM_DIR / f"{spec.dataset}.csv")
        results[name] = make_split(rows, spec, seed=params.seed)
    for name, spec in params.splits.items():
        result = exclude_other_tests(results[name], {o: results[o].parts["test"] for o in spec.exclude_test_of})
        for part, frame in result.parts.items():
            write_csv(frame, Path(args.out_dir) / name / f"{part}.csv")
        write_csv(result.dropped, Path(args.out_dir) / name / "dropped.csv")
        report[name] = result.report
        counts = ", ".join(f"{k} {v['total']}" for k, v in result.report["counts"].items())
        print(f"split {name}: {counts}; dropped {len(result.dropped)} "
              f"({result.report['conflicting_rows']} conflicting, {result.report['duplicates_removed']} duplicate, "
              f"{result.report['leaks_removed'] + sum(result.report['test_overlaps_removed'].values())} leaks)")
    write_json(report, args.metrics)
    return 0


if __name__ == "__main__":
    with StageClock("split"):
        raise SystemExit(main())
