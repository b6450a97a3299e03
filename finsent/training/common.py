"""What every HF Trainer run here shares (the encoder and the LoRA SFT): one builder for the
arguments, and TensorBoard + DVCLive on rank 0."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finsent.core.io import is_timing
from finsent.core.runtime import mixed_bf16, use_cuda
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
        bf16=mixed_bf16(hp.bf16),
        dataloader_num_workers=0,
    )
    return config_cls(**(common | specific))


def logging_callbacks(log_dir: str | Path, live_dir: str | Path) -> list:
    """TensorBoard events in ``log_dir`` (transformers 5 dropped ``logging_dir``) and DVCLive in
    ``live_dir`` (its metrics.json is a DVC metric, its plots/ DVC plots: `dvc exp show` lists the latest
    values of a running or queued experiment, and DVC's VS Code extension and Studio plot them). None on the
    non-zero ranks of a multi-process run, so only rank 0 writes."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    if int(os.environ.get("RANK", "0")) != 0:
        return []
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir))), dvclive_callback(live_dir)]


NOT_LOGGED = frozenset({"total_flos"})  # a Trainer log field that is no one's metric


def live_metric_name(key: str) -> str | None:
    """The DVCLive name of a Trainer log field: ``eval_x`` -> ``eval/x``; the run's mean training loss
    (``train_loss``, logged once at the end) -> ``train/mean_loss``; ``epoch`` as is; any other field of a
    training step -> ``train/<field>``. None for timings (they change on every run, so they stay out of the
    metrics DVC compares) and NOT_LOGGED."""
    if is_timing(key) or key in NOT_LOGGED:
        return None
    if key.startswith("eval_"):
        return f"eval/{key[len('eval_'):]}"
    if key == "train_loss":
        return "train/mean_loss"
    return key if key == "epoch" else f"train/{key}"


def dvclive_callback(live_dir: str | Path):
    """transformers' DVCLiveCallback on a ``Live`` in ``live_dir`` that leaves dvc.yaml alone (the stage
    declares the files) and makes no experiment of its own (`dvc exp run` does); it logs at the Trainer's
    global step (plots over optimiser steps, not over log calls), under :func:`live_metric_name`, and does
    not dump the TrainingArguments as DVCLive params (params.yaml owns the knobs)."""
    from dvclive import Live
    from dvclive.plots import Metric
    from transformers.integrations import DVCLiveCallback

    class FinsentDVCLive(DVCLiveCallback):
        def setup(self, args, state, model):
            self._initialized = True

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            self.live.step = int(state.global_step)
            for key, value in (logs or {}).items():
                name = live_metric_name(key)
                if name is not None and Metric.could_log(value):
                    self.live.log_metric(name, value)
            self.live.next_step()

    return FinsentDVCLive(live=Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False))
