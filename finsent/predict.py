"""Inference with transformer encoders: the fine-tuned classifier and the zero-shot embedding baseline.

Texts are sorted by length and batched so padding stays small; results come back in input order.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .labels import LABEL_DESCRIPTIONS, LABELS
from .models import resolve_model_ref


def _device(name: str | None = None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def batched_by_length(texts: Sequence[str], tokenizer, forward: Callable[[dict], np.ndarray], *,
                      batch_size: int, max_length: int, device: torch.device, desc: str = "predict") -> np.ndarray:
    """Run ``forward`` over length-sorted batches; returns rows in the input order."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, len(LABELS)))
    order = np.argsort([len(t) for t in texts], kind="stable")
    outputs: list[np.ndarray] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt").to(device)
            outputs.append(forward(enc))
    stacked = np.concatenate(outputs)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result


def label_order(id2label: dict) -> list[int]:
    """Column permutation mapping a model's output ids onto ``LABELS``.

    Hub models order their labels differently (ProsusAI/finbert: positive, negative, neutral);
    generic names (LABEL_0..2) are taken to be in finsent's order.
    """
    names = {int(i): str(n).lower() for i, n in id2label.items()}
    if set(names.values()) == set(LABELS):
        inverse = {n: i for i, n in names.items()}
        return [inverse[lab] for lab in LABELS]
    if len(names) == len(LABELS):
        return list(range(len(LABELS)))
    raise ValueError(f"model labels {sorted(names.values())} cannot be mapped onto {list(LABELS)}")


class EncoderClassifier:
    """A sequence-classification model (the fine-tuned encoder, or any hub / local classifier)."""

    def __init__(self, model_ref: str, *, batch_size: int = 64, max_length: int = 128, device: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model_ref(model_ref)
        self.device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        self.columns = label_order(self.model.config.id2label)
        self.batch_size, self.max_length = batch_size, max_length

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        def forward(enc: dict) -> np.ndarray:
            logits = self.model(**enc).logits.float()
            return torch.softmax(logits, dim=-1)[:, self.columns].cpu().numpy()

        return batched_by_length(texts, self.tokenizer, forward, batch_size=self.batch_size,
                                 max_length=self.max_length, device=self.device, desc="encoder")


class EmbeddingZeroShot:
    """Zero-shot: cosine similarity of mean-pooled sentence embeddings to one description per label.

    This is the base encoder *before* fine-tuning, so the evaluate table shows what training added.
    """

    def __init__(self, model_ref: str, *, batch_size: int = 64, max_length: int = 128, temperature: float = 0.05,
                 descriptions: dict[str, str] | None = None, device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_ref(model_ref)
        self.device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.batch_size, self.max_length, self.temperature = batch_size, max_length, temperature
        descriptions = descriptions or LABEL_DESCRIPTIONS
        self.prototypes = self._embed([descriptions[lab] for lab in LABELS])

    def _pool(self, enc: dict) -> torch.Tensor:
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return batched_by_length(texts, self.tokenizer, lambda enc: self._pool(enc).float().cpu().numpy(),
                                 batch_size=self.batch_size, max_length=self.max_length, device=self.device,
                                 desc="embed")

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        sims = self._embed(texts) @ self.prototypes.T
        z = sims / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
