"""LoRA fine-tuning of a causal LM with trl's SFTTrainer (loading and scoring: finsent.inference.causal_lm)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from finsent.core.paths import SPLITS_DIR
from finsent.core.prompts import render_completion, render_prompt
from finsent.core.runtime import use_cuda
from finsent.core.schema import LLMHP, LLMSection, LoraSpec
from finsent.data.split import exclude_texts
from finsent.data.splits import load_split, sample_rows
from finsent.inference.llm_scoring import llm_test_rows
from finsent.training.common import logging_callbacks, trainer_arguments


@dataclass
class LLMRows:
    tests: dict[str, pd.DataFrame]  # per llm.eval_splits: the rows evaluate scores (test_rows)
    train: pd.DataFrame
    val: pd.DataFrame
    removed: int                    # train rows left out because their text is in one of the test sets


def llm_rows(llm_cfg: LLMSection, max_test_rows: int | None, seed: int, root: str | Path = SPLITS_DIR) -> LLMRows:
    """The causal LM's rows: it is scored on the rows evaluate scores (``evaluate.max_rows``), and learns from
    the train part of ``llm.train_split`` minus every text of those test sets (whole test sets, not only the
    sampled rows), sampled to ``llm.max_train_rows``; its eval loss reads the val part (``llm.max_val_rows``)."""
    tests = llm_test_rows(llm_cfg.eval_splits, max_test_rows, seed, root)
    train, removed = exclude_texts(load_split(llm_cfg.train_split, "train", root),
                                   [load_split(split, "test", root) for split in llm_cfg.eval_splits])
    return LLMRows(tests=tests, train=sample_rows(train, llm_cfg.max_train_rows, seed),
                   val=sample_rows(load_split(llm_cfg.train_split, "val", root), llm_cfg.max_val_rows, seed),
                   removed=removed)


def add_lora(model, spec: LoraSpec, *, quantized: bool, gradient_checkpointing: bool = False, seed: int = 0):
    """Wrap ``model`` with LoRA adapters (peft); fail loudly if nothing is trainable. The adapters'
    random initialisation is seeded (the Trainer seeds only later, after the model exists)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=spec.target_modules, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise RuntimeError(f"LoRA left no trainable parameter (target_modules={spec.target_modules!r}); "
                           f"name modules that exist in this model")
    return model


@contextlib.contextmanager
def merged_for_inference(model):
    """Score a LoRA model with its adapter merged into the base weights, and unmerge afterwards.

    The unmerged path runs every adapter as an extra float32 branch beside each bf16 layer (5x
    slower scoring on CPU). Only full-precision bases are merged: a 4-bit base is left as is (it is
    never merged into, see the issue's rule). The saved artefact stays the adapter alone.
    """
    mergeable = hasattr(model, "merge_adapter") and not getattr(model, "is_loaded_in_4bit", False) \
        and not any(type(m).__name__ == "Linear4bit" for m in model.modules())
    if mergeable:
        model.merge_adapter()
    try:
        yield model
    finally:
        if mergeable:
            model.unmerge_adapter()


def lora_target_names(model) -> set[str]:
    """Short names of the modules LoRA wrapped (for checks and logs)."""
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}


def sft_records(tokenizer, frame: pd.DataFrame) -> list[dict[str, str]]:
    """Prompt / completion pairs for trl (completion-only loss masks the prompt)."""
    return [{"prompt": render_prompt(tokenizer, text), "completion": render_completion(tokenizer, label)}
            for text, label in zip(frame["text"], frame["label"])]


def shared_prefix_length(batch: dict[str, Any]) -> int:
    """How many leading tokens every row of a right-padded SFT batch shares, up to (not including) the
    token before the first labelled one: the part a training step can run once for the whole batch.

    Every prompt starts with the same system prompt and fence (41 of SmolLM2's 84 tokens on balanced FPB).
    0 when the batch is not plain ``input_ids`` / ``attention_mask`` / ``labels`` (padding-free, images)
    or its rows share nothing useful."""
    if set(batch) != {"input_ids", "attention_mask", "labels"} or batch["input_ids"].shape[0] < 2:
        return 0
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    same = (ids == ids[:1]).all(0) & (mask == 1).all(0)
    n = int(same.long().cumprod(0).sum())
    labelled = (labels != -100).any(0).nonzero()
    if len(labelled):
        # The label at position p is predicted from position p - 1: p stays in the suffix, whose first
        # token is never a target there.
        n = min(n, int(labelled[0]) - 1)
    return max(0, min(n, ids.shape[1] - 2))


def _sft_trainer_class():
    from trl import SFTTrainer

    class SharedPrefixSFTTrainer(SFTTrainer):
        """trl's SFTTrainer, running the batch's shared prompt prefix once per step.

        The prefix goes through the model for one row (with gradients: LoRA changes it), its key/value
        cache is repeated for every row, and the rows' own suffixes attend to it, so a step computes
        41 + 8 x 43 tokens instead of 8 x 84 on balanced FPB. The loss, trl's fused LM head and its
        metrics are unchanged (tests/test_llm.py compares loss and gradients with the plain path). One
        difference: LoRA dropout on the prefix draws one mask for the batch instead of one per row.
        Off under gradient checkpointing (no cache) and data parallelism (two forwards per step).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            n = 0
            if not self.args.gradient_checkpointing and self.accelerator.num_processes == 1:
                n = shared_prefix_length(inputs)
            if n:
                ids = inputs["input_ids"]
                cache = model(input_ids=ids[:1, :n], use_cache=True, logits_to_keep=1).past_key_values
                cache.batch_repeat_interleave(ids.shape[0])
                # attention_mask keeps its full width: prefix columns + the suffix's own (with its padding).
                inputs = {**inputs, "input_ids": ids[:, n:], "labels": inputs["labels"][:, n:],
                          "past_key_values": cache}
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return SharedPrefixSFTTrainer


def sft_trainer(model, tokenizer, train_df: pd.DataFrame, eval_df: pd.DataFrame | None, hp: LLMHP, *,
                work_dir: str | Path, log_dir: str | Path, live_dir: str | Path,
                max_steps: int | None = None, share_prefix: bool = True):
    """trl's SFTTrainer for LoRA SFT of ``model`` on prompt/completion pairs (completion-only loss), the loss
    curve to TensorBoard (``log_dir``) and DVCLive (``live_dir``). ``share_prefix``: run the prompts' common
    beginning once per batch (SharedPrefixSFTTrainer; ``bench/llm_cost.py --plain`` measures it)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    has_eval = eval_df is not None and len(eval_df) > 0
    config = trainer_arguments(
        SFTConfig, hp, work_dir=work_dir, max_steps=max_steps,
        per_device_eval_batch_size=hp.batch_size,
        optim=hp.optim,
        max_length=hp.max_length,
        completion_only_loss=True,
        packing=False,
        # Batches of similar length: on balanced FPB a random batch of 8 is 26% padding, computed for nothing.
        train_sampling_strategy="group_by_length",
        gradient_checkpointing=hp.gradient_checkpointing,
        # Non-reentrant checkpointing and no unused-parameter search: what LoRA needs under DDP.
        gradient_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,
        eval_strategy="epoch" if has_eval else "no",
        save_total_limit=1,
    )
    train_ds = Dataset.from_list(sft_records(tokenizer, train_df))
    eval_ds = Dataset.from_list(sft_records(tokenizer, eval_df)) if has_eval else None
    trainer_cls = _sft_trainer_class() if share_prefix else SFTTrainer
    return trainer_cls(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                       processing_class=tokenizer, callbacks=logging_callbacks(log_dir, live_dir))


def sft_train(model, tokenizer, train_df: pd.DataFrame, eval_df: pd.DataFrame | None, hp: LLMHP, *,
              work_dir: str | Path, log_dir: str | Path, live_dir: str | Path,
              max_steps: int | None = None, share_prefix: bool = True) -> dict[str, Any]:
    """LoRA SFT (``sft_trainer``); returns its summary (losses, steps, seconds, peak GPU memory)."""
    trainer = sft_trainer(model, tokenizer, train_df, eval_df, hp, work_dir=work_dir, log_dir=log_dir,
                          live_dir=live_dir, max_steps=max_steps, share_prefix=share_prefix)
    config = trainer.args
    cuda = use_cuda()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    summary = {
        "steps": int(trainer.state.global_step),
        "train_loss": round(float(result.training_loss), 4),
        "first_loss": round(float(losses[0]), 4) if losses else None,
        "last_loss": round(float(losses[-1]), 4) if losses else None,
        "eval_loss": round(float(evals[-1]), 4) if evals else None,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, trainer.state.global_step), 3),
        "train_rows": len(trainer.train_dataset),
        "bf16_mixed_precision": bool(config.bf16),
    }
    if cuda:
        summary["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return summary
