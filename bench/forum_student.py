"""Benchmark: the forum student's settings, chosen by 5-fold CV against its teacher's labels on the pool.

For each setting of `workflows.<flow>.student` (the params.yaml one, changed by `--set key=v1,v2`, every
combination), it embeds the pool (through the same content cache train_forum uses, so only new texts
cost time), scores 5-fold stratified CV macro-F1 against the teacher's labels (what a user can select
on: the pool is all the labels there are), then fits on the whole pool and scores the frozen human test
set (for the record only: choosing by it would overfit 100 posts). The baseline is params.yaml's
setting, measured in the same run; every row shows its CV difference to it.

Cost: `--time-sample N` embeds N pool posts without the cache for each distinct `max_chars` and prints
posts/s, so the speed of a setting is measured here, not assumed.

    python bench/forum_student.py --set max_chars=null,300,500,1000 [--time-sample 200]

Needs the pool (`dvc repro label_forum`) and the split; writes bench/results/forum_student.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finsent.core.io import read_interim  # noqa: E402
from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import workflow_labelled_dir  # noqa: E402
from finsent.data.splits import test_rows  # noqa: E402
from finsent.evaluation.metrics import accuracy_and_macro_f1, bootstrap_intervals, probs_to_labels  # noqa: E402
from finsent.inference.embedding_head import EmbeddingCache, load_embedder  # noqa: E402
from finsent.training.student import EMBEDDING_CACHE, fit_head, training_pool  # noqa: E402

BASELINE = "params.yaml"


def settings(base, assignments: list[str]) -> list[tuple[str, object]]:
    """(name, StudentSection) for every combination of the `key=v1,v2` assignments (values are YAML)."""
    keys, values = [], []
    for item in assignments:
        key, _, vals = item.partition("=")
        keys.append(key)
        values.append([yaml.safe_load(v) for v in vals.split(",")])
    out = [(BASELINE, base)]
    for combo in itertools.product(*values):
        spec = base.model_copy(update=dict(zip(keys, combo)))
        spec = type(base).model_validate(spec.model_dump())  # a typo'd key or a bad value stops here
        if spec != base:
            out.append((", ".join(f"{k}={v}" for k, v in zip(keys, combo)), spec))
    return out


def head_student_data(workflow: str, bench: str):
    """(params, the workflow's section, its teacher-labelled pool, the frozen test rows): the common start of
    the bench/forum_*.py benches, which all compare head students."""
    params = load_params(ROOT / "params.yaml")
    flow = params.workflow(workflow)
    if flow.student.kind != "embedding_head":
        raise SystemExit(f"{bench} compares head students; workflows.{workflow}.student is kind "
                         f"{flow.student.kind!r} (its held-out fit to the teacher is in metrics/{workflow}/train.json)")
    pool, _ = training_pool(read_interim(workflow_labelled_dir(workflow) / "pool.csv"), flow.student, params.seed)
    test = test_rows(flow.evaluate.test_sets[next(iter(flow.evaluate.test_sets))].split, None, params.seed,
                     root=ROOT / "data/splits")
    return params, flow, pool, test


def embed_cached(flow, embedder, **texts: list[str]) -> dict[str, np.ndarray]:
    """Each named list of texts embedded through the student's content cache (only new texts cost time)."""
    cache = EmbeddingCache(Path(flow.label.cache_dir) / EMBEDDING_CACHE)
    try:
        return {name: cache.embed(embedder, items, desc=f"embed {name}") for name, items in texts.items()}
    finally:
        cache.close()


def test_scores(flow, test, pred, seed) -> dict:
    """The frozen human test's figures for one setting's predictions (for the record only)."""
    gold, pred = test["label"].tolist(), list(pred)
    return {"test": accuracy_and_macro_f1(gold, pred),
            "test_ci": bootstrap_intervals(gold, pred, flow.evaluate.bootstrap_resamples, seed)}


def report(rows: list[dict], out: str | Path, extra=(), **meta) -> None:
    """Print each setting's CV against the teacher, its difference to the baseline (``rows[0]``), its test
    figures and the ``extra`` columns ((header, row -> text) pairs); write ``out`` as JSON with ``meta``."""
    base, width = rows[0]["cv_macro_f1_vs_teacher"], max(len(r["setting"]) for r in rows) + 2
    print(f"\n{'setting':<{width}} {'CV vs teacher':>13} {'vs ' + BASELINE:>15} {'test acc / F1':>14}"
          + "".join(f" {header:>11}" for header, _ in extra))
    for r in rows:
        print(f"{r['setting']:<{width}} {r['cv_macro_f1_vs_teacher']:>13.4f} {r['cv_macro_f1_vs_teacher'] - base:>+15.4f} "
              f"{r['test']['accuracy']:>6.2f} / {r['test']['macro_f1']:.3f}" + "".join(f" {cell(r):>11}" for _, cell in extra))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"baseline": BASELINE, **meta, "rows": rows}, indent=2) + "\n")


def cv_folds(labels, seed: int, folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) row indices of the seeded stratified folds every forum bench compares on."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def cv_macro_f1(spec, embedder, texts, labels, embeddings, seed, folds=5) -> float:
    texts, labels = np.asarray(texts, dtype=object), np.asarray(labels, dtype=object)
    pred = np.empty(len(labels), dtype=object)
    for train, held in cv_folds(labels, seed, folds):
        model = fit_head(spec, embedder, list(texts[train]), list(labels[train]), embeddings[train], seed)
        pred[held] = probs_to_labels(model.predict_proba(list(texts[held]), embeddings[held]))
    return accuracy_and_macro_f1(list(labels), list(pred))["macro_f1"]


def embed_speed(spec, texts, n, seed) -> float:
    sample = list(np.random.default_rng(seed).choice(np.asarray(texts, dtype=object), size=min(n, len(texts)),
                                                     replace=False))
    embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
    start = time.perf_counter()
    EmbeddingCache(None).embed(embedder, sample, desc=f"time max_chars={spec.max_chars}")
    return len(sample) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default="forum")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                    help="student settings to try (YAML values; repeat for a grid)")
    ap.add_argument("--time-sample", type=int, default=0, help="posts embedded uncached per max_chars, for posts/s")
    ap.add_argument("--out", default=str(ROOT / "bench/results/forum_student.json"))
    args = ap.parse_args()

    params, flow, pool, test = head_student_data(args.workflow, "bench/forum_student.py")
    texts, labels = pool["text"].tolist(), pool["label"].tolist()
    rows, speeds = [], {}
    for name, spec in settings(flow.student, args.set):
        embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
        emb, test_emb = embed_cached(flow, embedder, pool=texts, test=test["text"].tolist()).values()
        cv = cv_macro_f1(spec, embedder, texts, labels, emb, params.seed)
        model = fit_head(spec, embedder, texts, labels, emb, params.seed)
        pred = probs_to_labels(model.predict_proba(test["text"].tolist(), test_emb))
        scores = test_scores(flow, test, pred, params.seed)
        chars = sum(len(embedder.clip(t)) for t in texts) / max(1, sum(len(t) for t in texts))
        if args.time_sample and spec.max_chars not in speeds:
            speeds[spec.max_chars] = embed_speed(spec, texts, args.time_sample, params.seed)
        rows.append({"setting": name, "cv_macro_f1_vs_teacher": round(cv, 4), **scores,
                     "chars_embedded_share": round(chars, 3),
                     "embed_posts_per_s": round(speeds[spec.max_chars], 2) if spec.max_chars in speeds else None})
        print(f"{name}: CV {cv:.4f}  test {scores['test']['accuracy']:.2f} / {scores['test']['macro_f1']:.3f}", flush=True)
    report(rows, args.out, [("chars", lambda r: f"{r['chars_embedded_share']:.0%}"),
                            ("posts/s", lambda r: f"{r['embed_posts_per_s']:.1f}" if r["embed_posts_per_s"] else "-")],
           train_rows=len(texts), test_rows=len(test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
