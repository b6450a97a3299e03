"""Causal-LM sentiment: load (optionally 4-bit) and predict by scoring (training: finsent.training.lora).

Prediction never parses free text: for every row the model's log-likelihood of each label's
tokens after the shared prompt (finsent.core.prompts) is computed and normalised over the three
labels, so every row gets exactly one valid label and a probability per class.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from finsent.core.labelset import LABELS
from finsent.core.paths import MODEL_CACHE_DIR
from finsent.core.prompts import label_continuations, render_prompt
from finsent.core.refs import resolve_model_ref
from finsent.core.runtime import resolve_dtype, softmax
from finsent.core.schema import Quantization


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _from_pretrained_args(ref: str) -> tuple[str, dict[str, Any]]:
    """(path or hub id, extra kwargs): a ``.gguf`` file loads through transformers' GGUF reader."""
    path = resolve_model_ref(ref)
    if path.endswith(".gguf") and Path(path).is_file():
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


def check_4bit_support() -> None:
    """Fail with a clear message where bitsandbytes cannot quantise to 4 bit."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        raise RuntimeError(
            f"4-bit quantisation was asked for (llm quantization.load_in_4bit: true) but bitsandbytes cannot "
            f"be used here ({type(exc).__name__}: {exc}). Install bitsandbytes (Linux x86-64/aarch64 or CUDA), "
            f"or set the hp set's quantization.load_in_4bit to false") from None


def quantization_config(spec: Quantization | None):
    """BitsAndBytesConfig from params (nf4, double quantisation, compute dtype), or None when off."""
    if spec is None or not spec.load_in_4bit:
        return None
    check_4bit_support()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(spec.compute_dtype),
    )


def disable_cpu_inference_repack(model) -> int:
    """Guard against the bitsandbytes CPU bug (STACK.md): on AVX512-BF16 CPUs the first no-grad
    forward repacks 4-bit weights into an inference-only layout, after which LoRA gradients
    are silently zero. Returns how many Linear4bit modules were fixed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def clear_gguf_marker(model) -> None:
    """transformers dequantises GGUF tensors into ordinary fp32 weights but keeps a GGUF
    "quantization" marker that makes Trainer refuse to train and save_pretrained refuse to save."""
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)


def materialise_gguf(directory: str, gguf_file: str, cache: str | Path = MODEL_CACHE_DIR) -> str:
    """Dequantise a GGUF model once into a safetensors directory (reloads in a fraction of a second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(cache) / Path(gguf_file).stem
    if not (out / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
        clear_gguf_marker(model)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file).save_pretrained(out)
    return str(out)


def load_causal_lm(ref: str, quantization: Quantization | None = None, dtype: str | None = None):
    """(model, tokenizer) for a hub id, a local directory, a .gguf file or a pkg:// reference.
    ``dtype`` (see resolve_dtype) applies to unquantised weights; 4-bit models compute in the
    quantization's compute dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, extra = _from_pretrained_args(ref)
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bnb_config = quantization_config(quantization)
    kwargs: dict[str, Any] = dict(extra)
    if bnb_config is not None:
        kwargs["quantization_config"] = bnb_config
        kwargs["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}  # this process's GPU
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is not None and bnb_config is None:
        kwargs["dtype"] = torch_dtype
    if "gguf_file" in extra and bnb_config is not None:
        # GGUF weights come dequantised; 4-bit needs a full-precision checkpoint to quantise from.
        path = materialise_gguf(path, extra["gguf_file"])
        kwargs.pop("gguf_file")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "gguf_file" in kwargs:
        clear_gguf_marker(model)
    if bnb_config is not None:
        disable_cpu_inference_repack(model)
    elif torch.cuda.is_available():
        model = model.to("cuda")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ---------------------------------------------------------------------------------------------
# Data and scoring
# ---------------------------------------------------------------------------------------------

def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence shares (at least one token is left to each)."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _accepts(model, argument: str) -> bool:
    """Whether the (possibly peft-wrapped) model's forward takes ``argument``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


@contextlib.contextmanager
def _contiguous_head_input(model):
    """Make the LM head's input contiguous while scoring. With ``logits_to_keep=1`` the head gets a
    strided [batch, 1, hidden] slice, and torch 2.13 multiplies that by a *frozen* bf16 weight through
    a batched matmul that copies the whole weight once per row (0.46 s of a 0.93 s forward for
    SmolLM2 after LoRA froze it, against 4 ms contiguous)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handle = None
    if isinstance(head, torch.nn.Module):
        handle = head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@torch.inference_mode()
def score_labels(model, tokenizer, texts: Sequence[str], batch_size: int = 16, desc: str = "score",
                 reuse_prefix: bool = True, per_label: bool = False) -> np.ndarray:
    """(n, 3) probabilities over LABELS from the label log-likelihoods after the prompt.

    When every label is one distinct token (SmolLM2, Phi-2), one forward pass per row suffices: the
    next-token log-probs of the three label tokens. The prompt's shared beginning (system prompt and
    fence) is run once and its key/value cache reused for every batch (``reuse_prefix``).
    Otherwise (or with ``per_label``) each label's tokens are scored by a forward pass per label.
    """
    texts = list(texts)
    if not texts:
        return np.zeros((0, len(LABELS)))
    model.eval()
    device = next(model.parameters()).device
    prompts = [render_prompt(tokenizer, t) for t in texts]
    conts = label_continuations(tokenizer, prompts[0])
    single = not per_label and all(len(c) == 1 for c in conts) and len({c[0] for c in conts}) == len(LABELS)
    label_ids = [c[0] for c in conts]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), len(LABELS)))
    prefix_len, prefix_cache = 0, None
    if single and reuse_prefix and len(ids) > 1:
        prefix_len = _common_prefix(ids)
        if prefix_len:
            prefix_cache = model(input_ids=torch.tensor([ids[0][:prefix_len]], device=device),
                                 use_cache=True).past_key_values
    pad = tokenizer.pad_token_id
    keep_last = _accepts(model, "logits_to_keep")
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start:start + batch_size]
        if single:
            # Left-padded suffixes after the (cached) prefix, so every row ends at the last column and only
            # that column's logits are computed (the LM head over the whole vocabulary is ~1/5 of the model).
            suffixes = [ids[i][prefix_len:] for i in idx]
            width = max(len(x) for x in suffixes)
            inp = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), prefix_len + width), dtype=torch.long)
            mask[:, :prefix_len] = 1
            positions = torch.full((len(idx), width), prefix_len, dtype=torch.long)
            for r, suf in enumerate(suffixes):
                inp[r, width - len(suf):] = torch.tensor(suf)
                mask[r, prefix_len + width - len(suf):] = 1
                positions[r, width - len(suf):] = torch.arange(prefix_len, prefix_len + len(suf))
            kwargs: dict[str, Any] = {"position_ids": positions.to(device)}
            if keep_last:
                kwargs["logits_to_keep"] = 1
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(idx))
                kwargs["past_key_values"] = cache
            with _contiguous_head_input(model):
                logits = model(input_ids=inp.to(device), attention_mask=mask.to(device), **kwargs).logits
            final = logits[:, -1].float()
            out[idx] = torch.log_softmax(final, -1)[:, label_ids].cpu().numpy()
        else:
            for j, label in enumerate(LABELS):
                full = [ids[i] + conts[j] for i in idx]
                width = max(len(x) for x in full)
                inp = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros_like(inp)
                for r, seq in enumerate(full):
                    inp[r, :len(seq)] = torch.tensor(seq)
                    mask[r, :len(seq)] = 1
                logp = torch.log_softmax(model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits.float(), -1)
                for r, seq in enumerate(full):
                    k = len(conts[j])
                    positions = torch.arange(len(seq) - k - 1, len(seq) - 1)
                    out[idx[r], j] = float(logp[r, positions, torch.tensor(conts[j])].sum())
    return softmax(out)


def score_frames(model, tokenizer, frames: Mapping[str, pd.DataFrame], batch_size: int = 16,
                 desc: str = "score") -> dict[str, np.ndarray]:
    """Probabilities for the ``text`` of several frames, scoring each distinct text once (test
    splits of one corpus share sentences; a text's prompt, hence its scores, is the same in all)."""
    unique = list(dict.fromkeys(t for frame in frames.values() for t in frame["text"]))
    probs = score_labels(model, tokenizer, unique, batch_size=batch_size, desc=desc)
    row = {t: i for i, t in enumerate(unique)}
    return {name: probs[[row[t] for t in frame["text"]]] for name, frame in frames.items()}


