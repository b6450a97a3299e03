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
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forum_student import BASELINE, cv_folds, embed_cached, head_student_data, report, test_scores  # noqa: E402  (bench/ is this script's directory)

from finsent.data.splits import load_split  # noqa: E402
from finsent.evaluation.metrics import accuracy_and_macro_f1, probs_to_labels  # noqa: E402
from finsent.inference.embedding_head import load_embedder  # noqa: E402
from finsent.training.student import fit_head  # noqa: E402

FIELDS = {"company": lambda f: f["company"].astype(str),
          "year": lambda f: pd.to_datetime(f["datetime"], errors="coerce").dt.year.astype("Int64").astype(str),
          "company_year": lambda f: FIELDS["company"](f) + "|" + FIELDS["year"](f)}


def one_hot(train: pd.Series, other: pd.Series, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Indicator columns for the values ``train`` holds at least ``min_count`` times (others: all zero)."""
    from sklearn.preprocessing import OneHotEncoder

    counts = train.value_counts()
    encoder = OneHotEncoder(categories=[sorted(counts[counts >= min_count].index)], handle_unknown="ignore",
                            sparse_output=False, dtype=np.float32).fit(train.to_frame())
    return encoder.transform(train.to_frame()), encoder.transform(other.to_frame())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default="forum")
    ap.add_argument("--fields", default="company,year,company_year", help=f"which of {sorted(FIELDS)} to try, one at a time")
    ap.add_argument("--weights", default="1", help="weights w of the one-hot columns")
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/forum_metadata.json"))
    args = ap.parse_args()

    params, flow, pool, test = head_student_data(args.workflow, "bench/forum_metadata.py")
    spec, seed = flow.student, params.seed
    meta = load_split(flow.label.pool.split, flow.label.pool.part, root=ROOT / "data/splits")
    pool = pool.join(meta.drop_duplicates("text").set_index("text")[["company", "datetime"]], on="text")
    missing = int(pool["company"].isna().sum())
    texts, labels, test_texts = pool["text"].tolist(), np.asarray(pool["label"], dtype=object), test["text"].tolist()
    embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
    emb, test_emb = embed_cached(flow, embedder, pool=texts, test=test_texts).values()
    print(f"{len(texts)} pool posts ({missing} without metadata), {len(test)} test posts")

    settings = [(None, 0.0)] + [(f, float(w)) for f in args.fields.split(",") for w in args.weights.split(",")]
    folds = cv_folds(labels, seed, args.folds)
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
            pred[held] = probs_to_labels(head.predict_proba([texts[i] for i in held], he))
        cv = accuracy_and_macro_f1(list(labels), list(pred))["macro_f1"]
        tr, te = features(np.arange(len(texts)), test, test_emb)
        head = fit_head(spec, embedder, texts, list(labels), tr, seed)
        test_pred = probs_to_labels(head.predict_proba(test_texts, te))
        name = BASELINE if field is None else f"+ {field} one-hot x {w:g}"
        rows.append({"setting": name, "cv_macro_f1_vs_teacher": round(cv, 4), **test_scores(flow, test, test_pred, seed)})
        print(f"{name}: CV {cv:.4f}  test {rows[-1]['test']['accuracy']:.2f} / {rows[-1]['test']['macro_f1']:.3f}", flush=True)
    report(rows, args.out, train_rows=len(texts), min_count=args.min_count, test_rows=len(test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
