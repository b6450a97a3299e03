"""Fine-tune an encoder sequence classifier (HF Trainer) on the union of the chosen train splits.

Speed on a CPU comes from four things: dynamic padding (DataCollatorWithPadding), the
length-grouped sampler (batches of similar length, so little padding), bf16 mixed precision where
the CPU multiplies bf16 natively (hp ``bf16: auto``), and evaluating once per epoch. Early
stopping watches validation macro-F1; the best checkpoint is the one saved to ``out_dir``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from finsent.core.cards import data_fingerprint, write_card
from finsent.core.labelset import ID2LABEL, LABEL2ID, LABELS
from finsent.core.refs import resolve_model_ref
from finsent.core.runtime import device_name, use_cuda
from finsent.core.schema import EncoderHP
from finsent.evaluation.metrics import PROB_COLUMNS, accuracy_and_macro_f1
from finsent.inference.packaged import transformers_path
from finsent.training.common import logging_callbacks, trainer_arguments


class EncodedDataset(torch.utils.data.Dataset):
    """Pre-tokenised rows; ``length`` feeds the length-grouped sampler; ``weights`` and ``soft`` (optional)
    reach the loss as each row's ``weight`` and ``soft_targets`` (a teacher's class probabilities)."""

    def __init__(self, encodings: Mapping[str, list], labels: Sequence[int] | None = None,
                 weights: Sequence[float] | None = None, soft: np.ndarray | None = None):
        self.encodings = encodings
        self.labels = labels
        self.weights = weights
        self.soft = soft
        self.lengths = [len(ids) for ids in encodings["input_ids"]]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.weights is not None:
            item["weight"] = float(self.weights[i])
        if self.soft is not None:
            item["soft_targets"] = [float(p) for p in self.soft[i]]
        return item


def encode(tokenizer, texts: Sequence[str], labels: Sequence[str] | None, max_length: int,
           weights: Sequence[float] | None = None, soft: np.ndarray | None = None) -> EncodedDataset:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    ids = [LABEL2ID[lab] for lab in labels] if labels is not None else None
    return EncodedDataset(dict(enc), ids, weights, soft)


def soft_targets_for(train_df: pd.DataFrame, path: str | Path) -> np.ndarray:
    """The teacher's class probabilities (columns p_<label>, LABELS order) for each row of ``train_df``,
    matched by id from ``path`` (the train_teacher stage's soft_targets.csv). A row the teacher never saw
    is an error: distilling from a guess would be silent."""
    table = pd.read_csv(path, dtype={"id": str}).set_index("id")
    missing = train_df.loc[~train_df["id"].isin(table.index), "id"]
    if len(missing):
        raise ValueError(f"{path}: no teacher probabilities for {len(missing)} of {len(train_df)} training rows "
                         f"(first: {missing.iloc[0]}); the teacher ran on other rows. Rerun it on these: "
                         f"`python stages/train_teacher.py && dvc commit -f train_teacher`, or set distill_weight: 0")
    return table.loc[train_df["id"], PROB_COLUMNS].to_numpy(dtype=np.float64)


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row T^2 x KL(teacher_T || student_T), both distributions softened at ``temperature`` (the teacher's
    from its probabilities: p^(1/T), renormalised); T^2 keeps the gradient's scale as T changes."""
    log_teacher = torch.log_softmax(teacher_probs.clamp_min(1e-8).log() / temperature, dim=-1)
    log_student = torch.log_softmax(logits / temperature, dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1) * temperature ** 2


def rdrop_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric KL divergence between two predictions of the same rows (R-Drop, Liang et al. 2021):
    (KL(a || b) + KL(b || a)) / 2, zero when the two dropout masks predict alike."""
    log_a, log_b = torch.log_softmax(logits_a, dim=-1), torch.log_softmax(logits_b, dim=-1)
    return 0.5 * ((log_a.exp() * (log_a - log_b)).sum(-1) + (log_b.exp() * (log_b - log_a)).sum(-1))


def agreement_weights(agreement: pd.Series | None, power: float) -> np.ndarray | None:
    """Per-row loss weights from annotator agreement: ``agreement ** power``, rows without an agreement
    level weighing 1, all rescaled to mean 1 (so the learning rate keeps its meaning). None when
    ``power`` is 0 or no row has an agreement level: the plain, unweighted loss."""
    if not power or agreement is None or agreement.isna().all():
        return None
    weights = agreement.astype(float).fillna(1.0).to_numpy() ** power
    return weights / weights.mean()


def row_weights(train_df: pd.DataFrame, agreement_power: float, class_weight: str | None) -> np.ndarray | None:
    """The loss weight of each training row: agreement weights times class-balance weights (either may be
    off), rescaled to mean 1; None when both are off (the plain loss). "balanced" is scikit-learn's: each
    row n / (classes x rows of its class), so a teacher's label skew does not become the student's prior."""
    from sklearn.utils.class_weight import compute_sample_weight

    weights = agreement_weights(train_df.get("agreement"), agreement_power)
    if class_weight == "balanced":
        balance = compute_sample_weight("balanced", train_df["label"].to_numpy())
        weights = balance if weights is None else weights * balance
    elif class_weight is not None:
        raise ValueError(f"class_weight: {class_weight!r} is not 'balanced' or None")
    return None if weights is None else weights / weights.mean()


def _row_loss_trainer(trainer_cls, *, weighted: bool, distill_weight: float = 0.0, temperature: float = 2.0,
                      rdrop_alpha: float = 0.0):
    """``trainer_cls`` whose training loss is computed per row: cross-entropy on the label (with the run's
    label smoothing), mixed with a teacher's soft targets when ``distill_weight`` > 0 ((1 - w) x CE + w x
    :func:`distillation_loss`), times each row's ``weight`` when ``weighted``; the batch mean, so the
    Trainer still divides it by the gradient-accumulation steps. With ``rdrop_alpha`` > 0 the batch runs
    twice (stacked into one forward pass, each copy with its own dropout masks): the row loss is the mean of
    the two copies' plus alpha x :func:`rdrop_loss` between them. Validation batches (no weights, no soft
    targets) take the Trainer's own loss; a training batch missing what the loss needs is an error
    (nothing trains unweighted or undistilled silently)."""

    class RowLossTrainer(trainer_cls):
        loss_is_scaled_for_ga = False  # a per-batch mean, like the model's own loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight, soft = inputs.pop("weight", None), inputs.pop("soft_targets", None)
            if weight is None and soft is None and not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if (weighted and weight is None) or (distill_weight and soft is None):
                raise RuntimeError("a training batch reached the loss without its row weights or soft targets")
            labels = inputs.pop("labels")
            copies = 2 if rdrop_alpha and model.training else 1
            if copies == 2:
                inputs = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in inputs.items()}
            outputs = model(**inputs)
            per_row = 0.0
            for logits in outputs.logits.float().chunk(copies):
                row = torch.nn.functional.cross_entropy(
                    logits, labels, reduction="none", label_smoothing=self.args.label_smoothing_factor)
                if distill_weight:
                    row = ((1 - distill_weight) * row
                           + distill_weight * distillation_loss(logits, soft.float(), temperature))
                per_row = per_row + row / copies
            if copies == 2:
                per_row = per_row + rdrop_alpha * rdrop_loss(*outputs.logits.float().chunk(2))
            if weighted:
                per_row = per_row * weight.to(per_row.dtype)
            loss = per_row.mean()
            return (loss, outputs) if return_outputs else loss

    return RowLossTrainer


def _compute_metrics(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return accuracy_and_macro_f1([LABELS[i] for i in labels], [LABELS[i] for i in np.asarray(logits).argmax(-1)])


@dataclass
class TrainOutput:
    summary: dict[str, Any]
    is_main_process: bool = True


def layers_below_top(model) -> dict[str, int]:
    """For layer-wise LR decay, how many transformer layers each parameter sits below the top one:
    layer i of n (``...layer.<i>.`` / ``...layers.<i>.``) n - 1 - i, the embeddings n, anything else
    (heads, a final norm) 0."""
    names = [name for name, _ in model.named_parameters()]
    layer_of = {name: int(m.group(1)) for name in names if (m := re.search(r"\.layers?\.(\d+)\.", f".{name}"))}
    n = max(layer_of.values(), default=-1) + 1
    return {name: (n - 1 - layer_of[name] if name in layer_of else n if "embed" in name.lower() else 0)
            for name in names}


def optimizer_groups(model, lr: float, weight_decay: float, head_multiplier: float = 1.0,
                     layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay on biases / norms; a larger LR for the freshly initialised
    classifier (and the pooler feeding it) when ``head_multiplier`` > 1; and with ``layer_decay`` < 1,
    layer-wise LR decay: the top transformer layer at ``lr``, each layer below ``layer_decay`` times the
    one above it, the embeddings one step further down."""
    head_parts = ("classifier", "score", "pooler")
    below = layers_below_top(model)
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")
        if any(f".{part}." in f".{name}" for part in head_parts):
            factor = head_multiplier
        else:
            factor = layer_decay ** below[name]
        groups.setdefault((factor, no_decay), []).append(param)
    return [{"params": params, "lr": lr * factor, "weight_decay": 0.0 if no_decay else weight_decay}
            for (factor, no_decay), params in groups.items()]


def layer_override(path: str, keep_layers: int | None) -> dict[str, int]:
    """The config override that builds only the first ``keep_layers`` transformer layers of the model at
    ``path`` (the layers above are not loaded), checked against the layers it has; {} for all of them."""
    if keep_layers is None:
        return {}
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(path).num_hidden_layers
    if keep_layers > layers:
        raise ValueError(f"hp keep_layers {keep_layers}: the model at {path} has {layers} transformer layers; "
                         f"set keep_layers to at most {layers}, or null for all")
    return {"num_hidden_layers": keep_layers}


def base_classifier(model_ref: str, keep_layers: int | None = None):
    """(tokenizer, model): the pretrained encoder ``model_ref`` (hub id, directory, pkg://) with a new
    classifier head over LABELS and only its first ``keep_layers`` transformer layers, as training starts
    from it (benchmarks build the same model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = transformers_path(resolve_model_ref(model_ref))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(ID2LABEL), label2id=dict(LABEL2ID),
        ignore_mismatched_sizes=True, **layer_override(path, keep_layers))
    if tokenizer.pad_token is None:  # causal-LM style tokenizers
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def train_encoder(train_df: pd.DataFrame, val_df: pd.DataFrame, *, model_ref: str, hp: EncoderHP,
                  hp_name: str, out_dir: str | Path, log_dir: str | Path, live_dir: str | Path,
                  work_dir: str | Path, patience: int = 2, max_steps: int | None = None,
                  class_weight: str | None = None, soft_targets: np.ndarray | None = None) -> TrainOutput:
    """Fine-tune ``model_ref`` on ``train_df`` (columns text, label), early-stopping on ``val_df``.
    The saved directory carries a model card (base model, max length, hp set, data fingerprint).
    The curves go to TensorBoard (``log_dir``) and DVCLive (``live_dir``): training loss by step,
    validation loss, accuracy and macro-F1 by epoch, and last the best checkpoint's validation figures.
    ``class_weight="balanced"`` weighs each row's loss against its class's frequency (with the hp set's
    agreement weights, if any). ``soft_targets`` (rows x classes, a teacher's probabilities aligned with
    ``train_df``) are required when the hp set's ``distill_weight`` is above 0."""
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    set_seed(hp.seed)
    tokenizer, model = base_classifier(model_ref, hp.keep_layers)
    if hp.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    if hp.distill_weight and (soft_targets is None or len(soft_targets) != len(train_df)):
        raise ValueError(f"hp set '{hp_name}' has distill_weight {hp.distill_weight}: give the teacher's soft "
                         f"targets for each of the {len(train_df)} training rows")
    weights = row_weights(train_df, hp.agreement_weight, class_weight)
    soft = soft_targets if hp.distill_weight else None
    train_ds = encode(tokenizer, train_df["text"], train_df["label"], hp.max_length, weights, soft)
    val_ds = encode(tokenizer, val_df["text"], val_df["label"], hp.max_length)

    cuda = use_cuda()
    args = trainer_arguments(
        TrainingArguments, hp, work_dir=work_dir, max_steps=max_steps,
        per_device_eval_batch_size=max(64, hp.batch_size),
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        label_smoothing_factor=float(hp.label_smoothing),
        # EncodedDataset yields only model inputs, labels and the optional row weight; the Trainer's
        # column filter (by the model's forward signature) would drop the weight before the loss sees it.
        remove_unused_columns=False,
    )
    groups = optimizer_groups(model, hp.learning_rate, hp.weight_decay, hp.head_lr_multiplier,
                              hp.layer_lr_decay)
    custom_loss = weights is not None or soft is not None or hp.rdrop_alpha > 0
    trainer_cls = (_row_loss_trainer(Trainer, weighted=weights is not None, distill_weight=hp.distill_weight,
                                     temperature=hp.distill_temperature, rdrop_alpha=hp.rdrop_alpha)
                   if custom_loss else Trainer)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": groups, "lr": hp.learning_rate}),
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if cuda else None),
        processing_class=tokenizer, compute_metrics=_compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=patience), *logging_callbacks(log_dir, live_dir)],
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    final = trainer.evaluate()  # the best checkpoint is loaded at the end (DVCLive logs its figures last)
    out_dir = Path(out_dir)
    trainer.save_model(str(out_dir))  # rank 0 only under accelerate/torchrun
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir))
        write_card(out_dir, model_id=f"{out_dir.name}", kind="encoder", base_model=model_ref,
                   max_length=hp.max_length, dtype="float32", hp_set=hp_name,
                   data_fingerprint=data_fingerprint(train_df["text"], train_df["label"]), train_rows=len(train_df))

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
        "device": device_name(),
        "bf16_mixed_precision": bool(args.bf16),
    }
    return TrainOutput(summary=summary, is_main_process=trainer.is_world_process_zero())
