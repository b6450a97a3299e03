"""Stage convert: raw files (params.yaml `datasets`) -> data/interim/<dataset>.csv + rejects + metrics."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.io import StageClock, write_csv, write_metrics  # noqa: E402
from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import INTERIM_DIR, METRICS_DIR  # noqa: E402
from finsent.data.convert import HEADLINE, UnreadableFile, convert_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default=str(INTERIM_DIR))
    ap.add_argument("--metrics", default=str(METRICS_DIR / "convert.json"))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    out_dir = Path(args.out_dir)
    summary = {}
    for name, spec in params.datasets.items():
        try:
            result = convert_dataset(name, spec)
        except UnreadableFile as exc:  # bad records are rejects; only a file that cannot be read stops here
            raise SystemExit(f"convert {name}: {exc}") from None
        write_csv(result.rows, out_dir / f"{name}.csv")
        write_csv(result.rejects, out_dir / "rejects" / f"{name}.csv")
        summary[name] = result.stats
        print(f"convert {name}: {result.stats['rows_out']} rows, {result.stats['rejected']} rejected "
              f"({out_dir / 'rejects' / (name + '.csv')}) -> {out_dir / (name + '.csv')}")
    write_metrics(summary, args.metrics, HEADLINE)
    return 0


if __name__ == "__main__":
    with StageClock("convert"):
        raise SystemExit(main())
