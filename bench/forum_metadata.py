"""Benchmark: do a post's company and year help the forum student imitate its teacher? Chosen by 5-fold CV
against the teacher's labels on the pool, as every student setting is.

Convert keeps each post's `company` and `datetime`. A forum's mood about one company in one period is
shared by many posts (a scandal, a rally), so the company, the year, or the pair may carry what a post's
words alone do not. One-hot columns for them (values seen fewer than `--min-count` times in the training
folds are dropped) are appended to the student's features ([e5 x embedding_weight | char TF-IDF]) with
weight w. Baseline: params.yaml's student (w = 0) on the same folds, in the same run; the frozen human test
for the record only (choosing by it would overfit 100 posts).

    python bench/forum_metadata.py --weights 0.5,1

Needs the pool (`dvc repro label_forum`), the split and the pool's embeddings (cached by any earlier
train_forum or bench run); writes bench/results/forum_metadata.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forum_student import BASELINE  # noqa: E402  (bench/ is this script's directory)

from finsent.core.io import read_interim  # noqa: E402
from finsent.core.labelset import LABELS  # noqa: E402
from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import workflow_labelled_dir  # noqa: E402
from finsent.data.splits import load_split, test_rows  # noqa: E402
from finsent.evaluation.metrics import accuracy_and_macro_f1, bootstrap_intervals  # noqa: E402
from finsent.inference.embedding_head import EmbeddingCache, load_embedder  # noqa: E402
from finsent.training.student import EMBEDDING_CACHE, fit_head, training_pool  # noqa: E402

FIELDS = {"company": lambda f: f["company"].astype(str),
          "year": lambda f: pd.to_datetime(f["datetime"], errors="coerce").dt.year.astype("Int64").astype(str),
          "company_year": lambda f: FIELDS["company"](f) + "|" + FIELDS["year"](f)}


def one_hot(train: pd.Series, other: pd.Series, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indicator columns for the values ``train`` holds at least ``min_count`` times (others: all zero)."""
    counts = train.value_counts()
    values = sorted(counts[counts >= min_count].index)
    index = {v: i for i, v in enumerate(values)}

    def encode(series):
        out = np.zeros((len(series), len(values)), np.float32)
        for r, v in enumerate(series):
            if v in index:
                out[r, index[v]] = 1.0
        return out

    return encode(train), encode(other)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default="forum")
    ap.add_argument("--fields", default="company,year,company_year", help=f"which of {sorted(FIELDS)} to try, one at a time")
    ap.add_argument("--weights", default="1", help="weights w of the one-hot columns")
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/forum_metadata.json"))
    args = ap.parse_args()

    from sklearn.model_selection import StratifiedKFold

    params = load_params(ROOT / "params.yaml")
    flow = params.workflow(args.workflow)
    spec, seed = flow.student, params.seed
    if spec.kind != "embedding_head":
        raise SystemExit(f"workflows.{args.workflow}.student is kind {spec.kind!r}: this bench extends a head student")
    pool, _ = training_pool(read_interim(workflow_labelled_dir(args.workflow) / "pool.csv"), spec, seed)
    split = flow.label.pool.split
    meta = load_split(split, flow.label.pool.part, root=ROOT / "data/splits").drop_duplicates("text").set_index("text")
    pool = pool.join(meta[["company", "datetime"]], on="text")
    test = test_rows(flow.evaluate.test_sets[next(iter(flow.evaluate.test_sets))].split, None, seed,
                     root=ROOT / "data/splits")
    missing = int(pool["company"].isna().sum())
    texts, labels, test_texts = pool["text"].tolist(), np.asarray(pool["label"], dtype=object), test["text"].tolist()
    cache = EmbeddingCache(Path(flow.label.cache_dir) / EMBEDDING_CACHE)
    try:
        embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
        emb, test_emb = cache.embed(embedder, texts, desc="embed pool"), cache.embed(embedder, test_texts, desc="embed test")
    finally:
        cache.close()
    print(f"{len(texts)} pool posts ({missing} without metadata), {len(test)} test posts")

    settings = [(None, 0.0)] + [(f, float(w)) for f in args.fields.split(",") for w in args.weights.split(",")]
    folds = list(StratifiedKFold(args.folds, shuffle=True, random_state=seed).split(texts, labels))
    rows = []
    for field, w in settings:
        def features(train_idx, other_frame, other_emb):
            """(train features, other features): the embeddings with the one-hot columns of the train rows'
            values appended (EmbeddingHead scales its embeddings by embedding_weight: divided out here)."""
            if field is None:
                return emb[train_idx], other_emb
            tr, ot = one_hot(FIELDS[field](pool.iloc[train_idx]), FIELDS[field](other_frame), args.min_count)
            scale = w / spec.embedding_weight
            return np.hstack([emb[train_idx], tr * scale]), np.hstack([other_emb, ot * scale])

        pred = np.empty(len(labels), dtype=object)
        for train, held in folds:
            tr, he = features(train, pool.iloc[held], emb[held])
            head = fit_head(spec, embedder, [texts[i] for i in train], labels[train], tr, seed)
            pred[held] = np.asarray(LABELS)[head.predict_proba([texts[i] for i in held], he).argmax(1)]
        cv = accuracy_and_macro_f1(list(labels), list(pred))["macro_f1"]
        tr, te = features(np.arange(len(texts)), test, test_emb)
        head = fit_head(spec, embedder, texts, list(labels), tr, seed)
        test_pred = list(np.asarray(LABELS)[head.predict_proba(test_texts, te).argmax(1)])
        name = BASELINE if field is None else f"+ {field} one-hot x {w:g}"
        rows.append({"setting": name, "cv_macro_f1_vs_teacher": round(cv, 4),
                     "test": accuracy_and_macro_f1(test["label"].tolist(), test_pred),
                     "test_ci": bootstrap_intervals(test["label"].tolist(), test_pred, flow.evaluate.bootstrap_resamples, seed)})
        print(f"{name}: CV {cv:.4f}  test {rows[-1]['test']['accuracy']:.2f} / {rows[-1]['test']['macro_f1']:.3f}", flush=True)
    base = rows[0]["cv_macro_f1_vs_teacher"]
    print(f"\n{'setting':<32} {'CV vs teacher':>13} {'vs ' + BASELINE:>15} {'test acc / F1':>14}")
    for r in rows:
        print(f"{r['setting']:<32} {r['cv_macro_f1_vs_teacher']:>13.4f} {r['cv_macro_f1_vs_teacher'] - base:>+15.4f} "
              f"{r['test']['accuracy']:>6.2f} / {r['test']['macro_f1']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"baseline": BASELINE, "train_rows": len(texts), "min_count": args.min_count,
                                          "test_rows": len(test), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
