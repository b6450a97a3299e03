"""What every HF Trainer run here shares (the encoder and the LoRA SFT): one builder for the
arguments, TensorBoard on rank 0, and one way to turn the log history into a DVC plot file."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from finsent.core.runtime import use_cuda
from finsent.core.schema import TrainerHP


def trainer_arguments(config_cls, hp: TrainerHP, *, work_dir: str | Path, max_steps: int | None = None,
                      **specific: Any):
    """``config_cls`` (TrainingArguments, trl's SFTConfig) from a hyperparameter set: the fields every
    run shares come from ``hp``; ``specific`` adds or overrides what one kind of run needs."""
    cuda = use_cuda()
    common = dict(
        output_dir=str(work_dir),
        learning_rate=float(hp.learning_rate),
        per_device_train_batch_size=int(hp.batch_size),
        gradient_accumulation_steps=int(hp.grad_accum),
        num_train_epochs=float(hp.epochs),
        max_steps=int(max_steps) if max_steps else -1,
        warmup_steps=float(hp.warmup),
        weight_decay=float(hp.weight_decay),
        lr_scheduler_type=hp.scheduler,
        seed=int(hp.seed),
        data_seed=int(hp.seed),
        save_strategy="epoch",
        save_only_model=True,
        logging_steps=int(hp.logging_steps),
        logging_first_step=True,
        report_to=[],
        use_cpu=not cuda,
        bf16=bool(hp.bf16) and cuda,
        dataloader_num_workers=0,
    )
    return config_cls(**(common | specific))


def tensorboard_callbacks(log_dir: str | Path) -> list:
    """A TensorBoard callback writing to ``log_dir`` (transformers 5 dropped ``logging_dir``);
    none on the non-zero ranks of a multi-process run, so only rank 0 writes events."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    if int(os.environ.get("RANK", "0")) != 0:
        return []
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)))]


def history_frame(log_history: list[dict[str, Any]], per: Literal["evaluation", "step"]) -> pd.DataFrame:
    """The Trainer's log history as a table for a DVC plot.

    ``evaluation``: one row per evaluation (epoch, step, the latest training loss, validation loss,
    accuracy and macro-F1): the encoder's curve. ``step``: one row per logged training step (step,
    epoch, training loss, learning rate): the SFT loss curve.
    """
    rows, last_loss = [], math.nan
    for entry in log_history:
        if per == "step":
            if "loss" in entry:
                rows.append({"step": int(entry["step"]), "epoch": round(float(entry.get("epoch", 0)), 4),
                             "train_loss": float(entry["loss"]),
                             "learning_rate": float(entry.get("learning_rate", 0.0))})
            continue
        if "loss" in entry:
            last_loss = entry["loss"]
        if "eval_macro_f1" in entry:
            rows.append({"epoch": round(float(entry.get("epoch", 0)), 3), "step": int(entry.get("step", 0)),
                         "train_loss": last_loss, "val_loss": entry.get("eval_loss"),
                         "val_accuracy": entry.get("eval_accuracy"), "val_macro_f1": entry.get("eval_macro_f1")})
    if per == "step":
        return pd.DataFrame(rows, columns=["step", "epoch", "train_loss", "learning_rate"]).round(6)
    columns = ["epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_macro_f1"]
    return pd.DataFrame(rows, columns=columns).round(4)
