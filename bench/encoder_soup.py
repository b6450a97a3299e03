"""Benchmark: model soups of the encoder runs that queued experiments left in the DVC cache.

A "soup" averages the weights of several fine-tunes of the same base (Wortsman et al. 2022). This script
takes experiments by name (`dvc exp list --all-commits`) or git revision, reads each one's trained
`models/encoder` from the local DVC cache with `dvc.api.read` (nothing is retrained), and
scores on the union of the train splits' validation parts (what a user may select on) and on each test set:

- every ingredient on its own, and the baseline: the current workspace's `models/encoder`, measured in
  the same run; every row shows its difference to it;
- the greedy soup: ingredients added best-validation first, each kept only if validation macro-F1 does
  not drop;
- the uniform soup of all ingredients.

    python bench/encoder_soup.py smooth01 epochs5 agree1 seed7 [--max-rows 2000]

Needs the experiments' models in the local cache (`dvc exp pull` for a teammate's) and the splits; writes
bench/results/encoder_soup.json. Measured figures are in the README ("What was tried for the CPU default").
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finsent.core.labelset import LABELS  # noqa: E402
from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import MODELS_DIR  # noqa: E402
from finsent.data.splits import load_split_union, sample_rows, test_rows  # noqa: E402
from finsent.evaluation.metrics import accuracy_and_macro_f1  # noqa: E402

BASELINE = "workspace"
ENCODER = str(MODELS_DIR / "encoder")
WEIGHTS = "model.safetensors"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def revision(name: str) -> str:
    """An experiment's commit (the last part of a refs/exps/... ref) or any git revision."""
    refs = [line.split() for line in git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").splitlines()]
    hits = [sha for sha, ref in refs if ref.rsplit("/", 1)[-1] == name]
    if hits:
        return hits[0]
    try:
        return git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        known = sorted({ref.rsplit("/", 1)[-1] for _, ref in refs})
        raise SystemExit(f"{name!r} is neither an experiment ({', '.join(known) or 'none here'}) nor a git revision")


def trained_weights(rev: str) -> bytes:
    """The model.safetensors of ``rev``'s encoder, read by DVC from the local cache (dvc.api: the revision's
    dvc.lock names the file's hash)."""
    import dvc.api

    return dvc.api.read(f"{ENCODER}/{WEIGHTS}", repo=str(ROOT), rev=rev, mode="rb")


def evaluation_sets(params, max_rows: int | None) -> dict:
    """The union of the train splits' validation parts (``val``: what a user may select on) and each test
    set the encoder is scored on, ``max_rows`` each (None: all)."""
    sets = {"val": sample_rows(load_split_union(params.train.splits, "val", root=ROOT / "data/splits"),
                               max_rows, params.seed)}
    sets.update({name: test_rows(spec.split, max_rows, params.seed, root=ROOT / "data/splits")
                 for name, spec in params.evaluate.test_sets.items()
                 if spec.models is None and spec.min_agreement is None})
    return sets


def score_weights(model_dir: Path, state: dict, sets: dict, only=None) -> dict[str, float]:
    """Macro-F1 on each set (or those in ``only``) of the encoder in ``model_dir`` with weights ``state``
    (written over its model.safetensors), in float32."""
    from safetensors.torch import save_file

    from finsent.inference.classifiers import EncoderClassifier

    save_file(state, str(model_dir / WEIGHTS))
    clf = EncoderClassifier(str(model_dir), dtype="float32")
    out = {}
    for name, rows in sets.items():
        if only is None or name in only:
            pred = np.asarray(LABELS)[clf.predict_proba(rows["text"].tolist()).argmax(1)]
            out[name] = round(accuracy_and_macro_f1(rows["label"].tolist(), list(pred))["macro_f1"], 4)
    return out


def average(states: list[dict]) -> dict:
    """The uniform average of state dicts of one architecture (float32)."""
    import torch

    return {k: sum(s[k].to(torch.float32) for s in states) / len(states) for k in states[0]}


def print_table(rows: dict[str, dict[str, float]], baseline: str, what: str, width: int) -> None:
    """Macro-F1 per model and set, each with its difference to ``baseline``'s row."""
    base = rows[baseline]
    print(f"\nmacro-F1; baseline = {what}\n")
    print(f"{'model':<{width}}" + "".join(f"{n:>20}" for n in base))
    for model, result in rows.items():
        print(f"{model[:width]:<{width}}" + "".join(f"{result[n]:>10.4f} ({result[n] - base[n]:+.4f})" for n in base))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="+", help="experiment names or git revisions with a trained encoder")
    ap.add_argument("--max-rows", type=int, default=None, help="rows per evaluation set (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/encoder_soup.json"))
    args = ap.parse_args()

    from safetensors.torch import load, load_file

    params = load_params(ROOT / "params.yaml")
    sets = evaluation_sets(params, args.max_rows)
    states = {BASELINE: load_file(str(ROOT / ENCODER / WEIGHTS))}
    states.update({name: load(trained_weights(revision(name))) for name in args.experiments})

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "encoder"
        shutil.copytree(ROOT / ENCODER, model_dir)

        def score(state, only=None) -> dict[str, float]:
            return score_weights(model_dir, state, sets, only)

        def soup(names: list[str]) -> dict:
            return average([states[n] for n in names])

        rows = {name: score(state) for name, state in states.items()}
        order = sorted(args.experiments, key=lambda n: -rows[n]["val"])
        chosen, best = [order[0]], rows[order[0]]["val"]
        for name in order[1:]:
            val = score(soup(chosen + [name]), only={"val"})["val"]
            print(f"greedy: + {name}: val {val:.4f} ({'kept' if val >= best else 'dropped'})")
            if val >= best:
                chosen, best = chosen + [name], val
        rows[f"greedy soup ({' + '.join(chosen)})"] = score(soup(chosen))
        rows[f"uniform soup ({len(args.experiments)})"] = score(soup(list(args.experiments)))

    print_table(rows, BASELINE, f"{BASELINE} models/encoder, measured in this run", width=60)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"baseline": BASELINE, "macro_f1": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
