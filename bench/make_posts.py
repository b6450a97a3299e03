"""Make a large input for `finsent predict` by repeating real posts (the tweets shipped in data/raw).

    python bench/make_posts.py --rows 1000000 -o /tmp/posts_1m.csv
    /usr/bin/time -v finsent predict /tmp/posts_1m.csv -o /tmp/labels_1m.parquet --keep-columns id

Columns: id (unique), text (the 11,931 tweets of the train and valid files, cycled). Written in
chunks, so making the file needs no more memory than reading it back does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "data/raw/twitter-financial-news-sentiment/sent_train.csv",
           ROOT / "data/raw/twitter-financial-news-sentiment/sent_valid.csv"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    posts = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False)["text"] for p in SOURCES], ignore_index=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w", encoding="utf-8", newline="") as fh:
        while written < args.rows:
            take = posts.head(args.rows - written)
            frame = pd.DataFrame({"id": [f"post-{i}" for i in range(written, written + len(take))], "text": take})
            frame.to_csv(fh, index=False, header=written == 0, lineterminator="\n")
            written += len(take)
    print(f"{written} rows ({len(posts)} distinct real posts, cycled) -> {out} ({out.stat().st_size / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
