"""Benchmark: does self-training on the seed's unlabelled posts help the forum student? Chosen by 5-fold CV
against the teacher's labels on the pool, as every student setting is.

The seed ships a second sample of 5,000 forum posts that no teacher answered (`forum_unlabelled`; 4,658
of them are in neither the pool nor the test). Self-training (Yarowsky 1995; "pseudo-labelling"): the
student's head, fitted on the teacher's labels, labels those posts; the ones it is at least tau sure of
join its training rows with weight w, and the head is fitted again. Inside CV the first head sees only the
training folds (a head fitted on the whole pool would carry the held-out fold's labels into the pseudo
labels). Baseline: params.yaml's student (no extra posts) on the same folds, in the same run; the frozen
human test for the record only (choosing by it would overfit 100 posts).

    python bench/forum_selftrain.py --tau 0.0,0.6,0.8 --weight 1,0.5

Needs the pool (`dvc repro label_forum`) and the split; embeds the unlabelled posts once through the
student's embedding cache (~4 min here); writes bench/results/forum_selftrain.json.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forum_student import BASELINE, cv_folds, embed_cached, head_student_data, report, test_scores  # noqa: E402  (bench/ is this script's directory)

from finsent.data.splits import load_split  # noqa: E402
from finsent.evaluation.metrics import accuracy_and_macro_f1, probs_to_labels  # noqa: E402
from finsent.inference.embedding_head import load_embedder  # noqa: E402
from finsent.training.student import fit_head  # noqa: E402


def self_trained(spec, embedder, texts, labels, emb, extra_texts, extra_emb, settings, seed):
    """{(tau, w): head} fitted on (texts, labels) + the extra posts a first head is >= tau sure of; (None, 0):
    the first head itself. Also returns how many extra posts each tau admitted."""
    first = fit_head(spec, embedder, texts, labels, emb, seed)
    proba = first.predict_proba(extra_texts, extra_emb)
    heads, admitted = {(None, 0.0): first}, {}
    for tau, w in settings:
        keep = np.flatnonzero(proba.max(1) >= tau)
        admitted[tau] = len(keep)
        pseudo = probs_to_labels(proba[keep])
        all_texts = list(texts) + [extra_texts[i] for i in keep]
        weights = np.concatenate([np.ones(len(texts)), np.full(len(keep), w)])
        heads[(tau, w)] = fit_head(spec, embedder, all_texts, list(labels) + pseudo,
                              np.vstack([emb, extra_emb[keep]]), seed, weights)
    return heads, admitted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default="forum")
    ap.add_argument("--unlabelled", default="forum_unlabelled", help="the split whose train part is the extra posts")
    ap.add_argument("--tau", default="0.0,0.6,0.8", help="confidence thresholds of the first head")
    ap.add_argument("--weight", default="1", help="sample weights of the pseudo-labelled posts")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench/results/forum_selftrain.json"))
    args = ap.parse_args()

    params, flow, pool, test = head_student_data(args.workflow, "bench/forum_selftrain.py")
    spec, seed = flow.student, params.seed
    settings = list(itertools.product([float(t) for t in args.tau.split(",")], [float(w) for w in args.weight.split(",")]))
    texts, labels, test_texts = pool["text"].tolist(), pool["label"].tolist(), test["text"].tolist()
    seen = set(texts) | set(test_texts)
    extra = [t for t in dict.fromkeys(load_split(args.unlabelled, "train", root=ROOT / "data/splits")["text"]) if t not in seen]
    embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
    emb, test_emb = embed_cached(flow, embedder, pool=texts, test=test_texts).values()
    start = time.perf_counter()
    extra_emb = embed_cached(flow, embedder, unlabelled=extra)["unlabelled"]
    extra_s = time.perf_counter() - start
    print(f"{len(texts)} teacher-labelled posts, {len(extra)} unlabelled ones (embedded in {extra_s:.0f} s; 0 when cached)")

    y = np.asarray(labels, dtype=object)
    pred = {key: np.empty(len(y), dtype=object) for key in [(None, 0.0)] + settings}
    admitted_cv = {tau: [] for tau, _ in settings}
    start = time.perf_counter()
    for fold, (train, held) in enumerate(cv_folds(y, seed, args.folds)):
        heads, admitted = self_trained(spec, embedder, [texts[i] for i in train], y[train], emb[train], extra,
                                       extra_emb, settings, seed)
        for tau, n in admitted.items():
            admitted_cv[tau].append(n)
        for key, head in heads.items():
            pred[key][held] = probs_to_labels(head.predict_proba([texts[i] for i in held], emb[held]))
        print(f"fold {fold + 1}/{args.folds} done ({time.perf_counter() - start:.0f} s)", flush=True)
    heads, admitted = self_trained(spec, embedder, texts, labels, emb, extra, extra_emb, settings, seed)

    rows = []
    for key, head in heads.items():
        tau, w = key
        cv = accuracy_and_macro_f1(labels, list(pred[key]))["macro_f1"]
        test_pred = probs_to_labels(head.predict_proba(test_texts, test_emb))
        rows.append({"setting": BASELINE if tau is None else f"self-training tau={tau:g} w={w:g}",
                     "tau": tau, "weight": w, "cv_macro_f1_vs_teacher": round(cv, 4),
                     "extra_posts_cv_mean": None if tau is None else round(float(np.mean(admitted_cv[tau]))),
                     "extra_posts_full_fit": None if tau is None else admitted[tau],
                     **test_scores(flow, test, test_pred, seed)})
    report(rows, args.out, [("extra posts", lambda r: str(r["extra_posts_full_fit"] or 0))], train_rows=len(texts),
           unlabelled_posts=len(extra), unlabelled_embed_seconds=round(extra_s, 1), folds=args.folds, test_rows=len(test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
