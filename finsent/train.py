"""Fine-tune an encoder sequence classifier (HF Trainer) on the union of the chosen train splits.

Speed on a CPU comes from three things: dynamic padding (DataCollatorWithPadding), the
length-grouped sampler (batches of similar length, so little padding), and evaluating
once per epoch. Early stopping watches validation macro-F1; the best checkpoint is the
one saved to ``out_dir``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score

from .labels import ID2LABEL, LABEL2ID, LABELS
from .models import resolve_model_ref

# Keys every hyperparameter set in params.yaml must define.
HP_KEYS = ("learning_rate", "batch_size", "grad_accum", "epochs", "warmup", "weight_decay", "max_length", "seed")


class EncodedDataset(torch.utils.data.Dataset):
    """Pre-tokenised rows; ``length`` feeds the length-grouped sampler."""

    def __init__(self, encodings: Mapping[str, list], labels: Sequence[int] | None = None):
        self.encodings = encodings
        self.labels = labels
        self.lengths = [len(ids) for ids in encodings["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def encode(tokenizer, texts: Sequence[str], labels: Sequence[str] | None, max_length: int) -> EncodedDataset:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = [LABEL2ID[lab] for lab in labels] if labels is not None else None
    return EncodedDataset(dict(enc), ids)


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(len(LABELS))), zero_division=0)),
    }


def _compute_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return classification_scores(labels, np.asarray(logits).argmax(-1))


def validate_hp(hp: Mapping[str, Any], name: str) -> None:
    missing = [k for k in HP_KEYS if k not in hp]
    if missing:
        raise KeyError(f"params.yaml hp_sets.{name}: missing {missing}; every set needs {', '.join(HP_KEYS)}")


@dataclass
class TrainOutput:
    summary: dict[str, Any]
    history: pd.DataFrame
    is_main_process: bool = True


def optimizer_groups(model, lr: float, weight_decay: float, head_multiplier: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay on biases / norms, and a larger LR for the freshly
    initialised classifier (and the pooler feeding it) when ``head_multiplier`` > 1."""
    head_parts = ("classifier", "score", "pooler")
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        is_head = any(f".{part}." in f".{name}" for part in head_parts)
        groups.setdefault((is_head, no_decay), []).append(param)
    return [{"params": params, "lr": lr * (head_multiplier if is_head else 1.0),
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (is_head, no_decay), params in groups.items()]


def tensorboard_callbacks(log_dir: str | Path) -> list:
    """A TensorBoard callback writing to ``log_dir`` (transformers 5 dropped ``logging_dir``);
    none on the non-zero ranks of a multi-process run, so only rank 0 writes events."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    if int(os.environ.get("RANK", "0")) != 0:
        return []
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))]


def history_frame(log_history: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluation: epoch, step, eval metrics and the latest training loss."""
    rows, last_loss = [], math.nan
    for entry in log_history:
        if "loss" in entry:
            last_loss = entry["loss"]
        if "eval_macro_f1" in entry:
            rows.append({"epoch": round(float(entry.get("epoch", 0)), 3), "step": int(entry.get("step", 0)),
                         "train_loss": last_loss, "val_loss": entry.get("eval_loss"),
                         "val_accuracy": entry.get("eval_accuracy"), "val_macro_f1": entry.get("eval_macro_f1")})
    columns = ["epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_macro_f1"]
    return pd.DataFrame(rows, columns=columns).round(4)


def train_encoder(train_df: pd.DataFrame, val_df: pd.DataFrame, *, model_ref: str, hp: Mapping[str, Any],
                  hp_name: str, out_dir: str | Path, log_dir: str | Path, work_dir: str | Path,
                  patience: int = 2, max_steps: int | None = None) -> TrainOutput:
    """Fine-tune ``model_ref`` on ``train_df`` (columns text, label), early-stopping on ``val_df``."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              EarlyStoppingCallback, Trainer, TrainingArguments, set_seed)

    validate_hp(hp, hp_name)
    seed = int(hp["seed"])
    set_seed(seed)
    path = resolve_model_ref(model_ref)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(ID2LABEL), label2id=dict(LABEL2ID),
        ignore_mismatched_sizes=True)
    if tokenizer.pad_token is None:  # causal-LM style tokenizers
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    max_length = int(hp["max_length"])
    train_ds = encode(tokenizer, train_df["text"], train_df["label"], max_length)
    val_ds = encode(tokenizer, val_df["text"], val_df["label"], max_length)

    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work_dir),
        learning_rate=float(hp["learning_rate"]),
        per_device_train_batch_size=int(hp["batch_size"]),
        per_device_eval_batch_size=max(64, int(hp["batch_size"])),
        gradient_accumulation_steps=int(hp["grad_accum"]),
        num_train_epochs=float(hp["epochs"]),
        max_steps=int(max_steps) if max_steps else -1,
        warmup_steps=float(hp["warmup"]),
        weight_decay=float(hp["weight_decay"]),
        lr_scheduler_type=hp.get("scheduler", "linear"),
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        logging_steps=int(hp.get("logging_steps", 25)),
        logging_first_step=True,
        report_to=[],
        use_cpu=not use_cuda,
        bf16=bool(hp.get("bf16", False)) and use_cuda,
        dataloader_num_workers=0,
        save_only_model=True,
    )
    lr, head_mult = float(hp["learning_rate"]), float(hp.get("head_lr_multiplier", 1.0))
    groups = optimizer_groups(model, lr, float(hp["weight_decay"]), head_mult)
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups, "lr": lr}),
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if use_cuda else None),
        processing_class=tokenizer, compute_metrics=_compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience), *tensorboard_callbacks(log_dir)],
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    history = history_frame(trainer.state.log_history)
    final = trainer.evaluate()  # the best checkpoint is loaded at the end
    out_dir = Path(out_dir)
    trainer.save_model(str(out_dir))  # rank 0 only under accelerate/torchrun
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir))

    summary = {
        "hp_set": hp_name,
        "base_model": model_ref,
        "train_rows": len(train_ds),
        "val_rows": len(val_ds),
        "epochs_run": round(float(trainer.state.epoch or 0), 3),
        "steps": int(trainer.state.global_step),
        "best_step": int(Path(best).name.rsplit("-", 1)[-1]) if (best := trainer.state.best_model_checkpoint) else None,
        "val_macro_f1": round(float(final["eval_macro_f1"]), 4),
        "val_accuracy": round(float(final["eval_accuracy"]), 4),
        "train_loss": round(float(result.training_loss), 4),
        "train_seconds": round(seconds, 1),
        "train_rows_per_second": round(len(train_ds) * float(trainer.state.epoch or 0) / seconds, 1),
        "device": "cuda" if use_cuda else f"cpu ({torch.get_num_threads()} threads)",
    }
    return TrainOutput(summary=summary, history=history, is_main_process=trainer.is_world_process_zero())
