"""Benchmark: checkpoint averaging within one training run of the encoder.

Trains the encoder once exactly as the train stage does (params.yaml's `train` and its hp set, the same
rows and validation part), keeping the epoch checkpoints the Trainer leaves (`save_total_limit: 2`: the
best and the latest), then scores on the validation part (what a user may select on) and each test set:

- the baseline: the model the stage ships (the best checkpoint by validation macro-F1), measured here;
- each kept checkpoint;
- their uniform weight average (one run's "checkpoint averaging", e.g. Izmailov et al. 2018's SWA in its
  simplest form), which costs no extra training.

Across-run averages (model soups of queued experiments) are bench/encoder_soup.py, whose scoring this
shares.

    python bench/checkpoint_average.py [--max-rows N] [--max-train-rows N]

A one-epoch recipe (the default since 2026-12-07, `mpnet-6l`) leaves one checkpoint and so nothing to
average; the measured run (README) used the 3-epoch MiniLM default of the time (now the hp set `minilm`).

Needs the splits (`dvc repro split`); trains for as long as the train stage does; writes
bench/results/checkpoint_average.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from encoder_soup import WEIGHTS, average, evaluation_sets, print_table, score_weights  # noqa: E402  (bench/ is this script's directory)

from finsent.core.params import load_params  # noqa: E402
from finsent.data.splits import training_rows, validation_rows  # noqa: E402

BASELINE = "shipped (best checkpoint)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-rows", type=int, default=None, help="rows per evaluation set (default: all)")
    ap.add_argument("--max-train-rows", type=int, default=None, help="a quick check on a subset (default: train's own)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/checkpoint_average.json"))
    args = ap.parse_args()

    from safetensors.torch import load_file

    from finsent.training.encoder import train_encoder

    params = load_params(ROOT / "params.yaml")
    cfg, hp = params.train, params.hp
    if args.max_train_rows:
        cfg = cfg.model_copy(update={"max_train_rows": args.max_train_rows})
    if hp.distill_weight:
        raise SystemExit("this bench trains without the teacher's soft targets: use an hp set with distill_weight 0")
    train_df = training_rows(cfg, params.seed)
    val_df = validation_rows(cfg, params.seed, root=ROOT / "data/splits")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = train_encoder(train_df, val_df, model_ref=cfg.model, hp=hp, hp_name=cfg.hp_set,
                               out_dir=tmp / "encoder", log_dir=tmp / "runs", live_dir=tmp / "live",
                               work_dir=tmp / "checkpoints", patience=cfg.early_stopping_patience,
                               max_steps=cfg.max_steps)
        summary = result.summary
        print(f"trained {summary['epochs_run']} epochs in {summary['train_seconds']} s; best step {summary['best_step']}")
        kept = sorted((int(p.name.split("-")[1]), p) for p in (tmp / "checkpoints").glob("checkpoint-*"))
        checkpoints = {f"step {step}": load_file(str(p / WEIGHTS)) for step, p in kept}
        states = {BASELINE: load_file(str(tmp / "encoder" / WEIGHTS)), **checkpoints}
        if len(checkpoints) > 1:
            states[f"average of steps {' + '.join(str(step) for step, _ in kept)}"] = average(list(checkpoints.values()))
        sets = evaluation_sets(params, args.max_rows)
        model_dir = tmp / "scored"
        shutil.copytree(tmp / "encoder", model_dir)
        rows = {name: score_weights(model_dir, state, sets) for name, state in states.items()}

    print_table(rows, BASELINE, f"{BASELINE}, trained in this run (device: {summary['device']})", width=40)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"baseline": BASELINE, "hp_set": cfg.hp_set, "train": summary,
                                          "macro_f1": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
