"""Inference: one path from a model reference to class probabilities over LABELS.

evaluate, `finsent predict` (finsent.inference.stream), `finsent serve` and the local teacher all load models
through :func:`load_classifier` and call ``predict_proba(texts) -> (n, 3)``.

Backends (``kind``)
- ``encoder``: a sequence classifier (the fine-tuned encoder, or any hub / local classifier) in
  PyTorch, in float32 or bfloat16 (``dtype``; ``auto`` = bfloat16 where the hardware does it natively);
- ``onnx``: an ONNX Runtime export of it (finsent.inference.export writes fp32 and dynamic-int8 directories);
- ``llm`` / ``causal_lm``: a causal LM scored by label likelihood (a LoRA adapter on its base, or zero-shot);
- ``zeroshot``: the base encoder's embeddings against one description per label.

Speed on a CPU: texts are tokenised once, ordered by token count and padded per batch (so a batch
pads to its own longest post, not the chunk's), under ``torch.inference_mode``; results come back in
input order. :func:`finsent.core.runtime.set_threads` sets PyTorch's and ONNX Runtime's thread counts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from finsent.core.cards import FALLBACK_MAX_LENGTH, read_card
from finsent.core.labelset import LABEL_DESCRIPTIONS, LABELS
from finsent.core.refs import resolve_model_ref
from finsent.core import runtime
from finsent.core.runtime import device as _device
from finsent.core.runtime import resolve_dtype, softmax
from finsent.inference.packaged import transformers_path

ONNX_FILE = "model.onnx"
KINDS = ("auto", "encoder", "onnx", "llm", "causal_lm", "zeroshot", "embedding_head")
# A post is cut at this many characters per token of max_length before tokenising: no WordPiece token
# is longer (max_input_chars_per_word), so what the model reads is unchanged, while a megabyte post
# costs no more to tokenise than a long one.
CHARS_PER_TOKEN = 100


def max_length_for(card: dict, override: int | None) -> int:
    """Tokens per post: the caller's override, else what the model was trained at (its card), else the fallback."""
    return int(override or card.get("max_length") or FALLBACK_MAX_LENGTH)


def output_matrix(card: dict, id2label: dict, label_map: Mapping[str, str] | None = None) -> np.ndarray:
    """(model outputs x LABELS) matrix taking a model's class probabilities onto ours: from the card's label
    order when the model has one (finsent's own models), else from the config's names through ``label_map``."""
    if card.get("labels"):
        return label_matrix(dict(enumerate(card["labels"])))
    return label_matrix(id2label, label_map)


def label_matrix(id2label: dict, label_map: Mapping[str, str] | None = None) -> np.ndarray:
    """How a classifier's outputs map onto ``LABELS``, as a 0/1 matrix (outputs x 3): probabilities are
    ``probs @ matrix``. Names equal to ours (any order or case, e.g. ProsusAI/finbert's positive, negative,
    neutral) map directly. Anything else needs an explicit ``label_map`` from the model's label names (or
    output ids) to ours, never an assumed order: ``{LABEL_0: negative, LABEL_1: neutral, LABEL_2: positive}``,
    ``{Bearish: negative, Bullish: positive}`` (a 2-class model: neutral gets 0), or five star ratings
    folded to three (their probabilities add up)."""
    names = {int(i): str(n) for i, n in id2label.items()}
    matrix = np.zeros((len(names), len(LABELS)))
    if label_map is None:
        folded = {i: n.lower() for i, n in names.items()}
        if sorted(folded.values()) != sorted(LABELS):
            raise ValueError(f"model labels {sorted(names.values())} are not {list(LABELS)}: give an explicit "
                             f"label_map from its label names to ours (params.yaml ...label_map, or "
                             f"`finsent predict --label-map`), e.g. {{{', '.join(f'{n}: ...' for n in names.values())}}}")
        for i, n in folded.items():
            matrix[i, LABELS.index(n)] = 1.0
        return matrix
    lookup = {str(k).lower(): str(v).lower() for k, v in label_map.items()}
    for i, n in names.items():
        target = lookup.get(n.lower(), lookup.get(str(i)))
        if target not in LABELS:
            raise ValueError(f"label_map: the model's label {n!r} (output {i}) maps to {target!r}; map every label "
                             f"of {sorted(names.values())} to one of {list(LABELS)}")
        matrix[i, LABELS.index(target)] = 1.0
    return matrix


class _Tokenised:
    """Shared by the encoder backends: tokenise once, run length-ordered batches, restore the order."""

    tokenizer = None
    batch_size: int = 64
    max_length: int = FALLBACK_MAX_LENGTH
    truncated: int = 0  # posts cut at max_length tokens so far (reported by `finsent predict`)
    progress: bool = True

    def batched_by_length(self, texts: Sequence[str], forward: Callable[[dict], np.ndarray], *,
                          tensors: str = "pt", desc: str = "predict") -> np.ndarray:
        """Run ``forward`` (padded batch -> rows) over batches of similar token count, in input order."""
        cap = self.max_length * CHARS_PER_TOKEN
        texts = [t if len(t) <= cap else t[:cap] for t in texts]
        if not texts:
            return np.zeros((0, len(LABELS)))
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))
        self.truncated += int((lengths >= self.max_length).sum())
        order = np.argsort(lengths, kind="stable")
        keys = list(enc.keys())
        result: np.ndarray | None = None
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), self.batch_size), desc=desc, unit="batch", leave=False,
                              **({} if self.progress else {"disable": True})):  # else TQDM_DISABLE decides
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors=tensors)
                rows = forward(batch)
                if result is None:
                    result = np.empty((len(texts), rows.shape[1]), dtype=rows.dtype)
                result[idx] = rows
        return result


class EncoderClassifier(_Tokenised):
    """A sequence-classification model in PyTorch (the fine-tuned encoder, or any hub / local classifier)."""

    def __init__(self, model_ref: str, *, batch_size: int = 64, max_length: int | None = None,
                 device: str | None = None, dtype: str = "float32", label_map: Mapping[str, str] | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = transformers_path(resolve_model_ref(model_ref))
        card = read_card(path)
        self.device = _device(device)
        self.dtype = resolve_dtype(dtype) or torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        self.to_labels = torch.as_tensor(output_matrix(card, self.model.config.id2label, label_map),
                                         dtype=torch.float32, device=self.device)
        self.batch_size, self.max_length = batch_size, max_length_for(card, max_length)
        self.model_id = f"{Path(path).name}:torch-{str(self.dtype).removeprefix('torch.')}"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        def forward(enc: dict) -> np.ndarray:
            logits = self.model(**enc.to(self.device)).logits.float()
            return (torch.softmax(logits, dim=-1) @ self.to_labels).cpu().numpy()

        return self.batched_by_length(texts, forward, desc="encoder")


class OnnxClassifier(_Tokenised):
    """An ONNX Runtime export of a sequence classifier: a directory with ``model.onnx``, the
    tokenizer and ``config.json`` (finsent.inference.export writes one per precision)."""

    def __init__(self, model_dir: str, *, batch_size: int = 64, max_length: int | None = None,
                 threads: int | None = None, label_map: Mapping[str, str] | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        path = Path(resolve_model_ref(model_dir))
        if not (path / ONNX_FILE).exists():
            raise FileNotFoundError(f"{path}: no {ONNX_FILE}; export one with `dvc repro export` "
                                    f"(or `python stages/export.py`)")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        n_threads = threads or runtime.threads()
        if n_threads:
            options.intra_op_num_threads = n_threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path / ONNX_FILE), options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        card = read_card(path)
        self.to_labels = output_matrix(card, AutoConfig.from_pretrained(path).id2label, label_map)
        # an export may pin its batch size (dynamic int8: per-batch activation ranges, see finsent.inference.export)
        self.batch_size = min(batch_size, card.get("batch_size") or batch_size)
        self.max_length = max_length_for(card, max_length)
        self.model_id = card.get("model_id") or f"{path.name}:onnx-{card.get('precision', 'fp32')}"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        def forward(enc: dict) -> np.ndarray:
            feed = {k: np.asarray(enc[k], dtype=np.int64) for k in self.inputs}
            return softmax(self.session.run(None, feed)[0].astype(np.float64)) @ self.to_labels

        return self.batched_by_length(texts, forward, tensors="np", desc="onnx")


class MeanPooledEncoder(_Tokenised):
    """Sentence embeddings from any transformers encoder: mean over the attention mask, L2-normalised."""

    def __init__(self, model_ref: str, *, batch_size: int = 64, max_length: int | None = None,
                 device: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = transformers_path(resolve_model_ref(model_ref))
        self.device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length_for(read_card(path), max_length)
        self.path = path

    def _pool(self, enc: dict) -> torch.Tensor:
        enc = enc.to(self.device)
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.batched_by_length(texts, lambda enc: self._pool(enc).float().cpu().numpy(), desc="embed")


class EmbeddingZeroShot(MeanPooledEncoder):
    """Zero-shot: cosine similarity of mean-pooled sentence embeddings to one description per label.

    This is the base encoder *before* fine-tuning, so the evaluate table shows what training added.
    """

    def __init__(self, model_ref: str, *, batch_size: int = 64, max_length: int | None = None,
                 temperature: float = 0.05, descriptions: dict[str, str] | None = None, device: str | None = None):
        super().__init__(model_ref, batch_size=batch_size, max_length=max_length, device=device)
        self.temperature = temperature
        self.model_id = f"{Path(self.path).name}:zeroshot"
        descriptions = descriptions or LABEL_DESCRIPTIONS
        self.prototypes = self.embed([descriptions[lab] for lab in LABELS])

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return softmax((self.embed(texts) @ self.prototypes.T) / self.temperature)


class LLMClassifier:
    """A causal LM scored by label likelihood (finsent.inference.causal_lm): zero-shot, or with a LoRA adapter."""

    def __init__(self, base: str, adapter_dir: str | None = None, dtype: str = "auto", batch_size: int = 16):
        from finsent.inference.causal_lm import load_causal_lm

        model, self.tokenizer = load_causal_lm(base, dtype=dtype)
        if adapter_dir:
            from peft import PeftModel
            # Merged in memory for speed (a full-precision base only; the artefact stays the adapter).
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        self.model = model.eval()
        self.batch_size = batch_size
        self.model_id = f"{Path(adapter_dir or base).name}:llm-{str(model.dtype).removeprefix('torch.')}"

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        from finsent.inference.causal_lm import score_labels

        return score_labels(self.model, self.tokenizer, texts, batch_size=self.batch_size, desc="causal LM")


def adapter_base(adapter_dir: Path) -> str:
    """The base model of a LoRA adapter, from the adapter itself: its card's ``base_model`` (the
    reference it was trained from, e.g. a pkg:// or hub id), else peft's ``base_model_name_or_path``.
    Never the working directory's params.yaml: the answer must not depend on where you run."""
    card = read_card(adapter_dir)
    if card.get("base_model"):
        return card["base_model"]
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json; not a LoRA adapter directory")
    return json.loads(config.read_text())["base_model_name_or_path"]


def model_name(ref: str) -> str:
    """A short name for a model reference: its card's id (``encoder:onnx-int8``), else the directory name."""
    return read_card(ref).get("model_id") or Path(ref).name


def detect_kind(path: Path) -> str:
    """``onnx`` for an export directory, ``llm`` for a LoRA adapter, ``embedding_head`` for a frozen-feature
    student (its card says so), else ``encoder``."""
    if read_card(path).get("kind") == "embedding_head":
        return "embedding_head"
    if (path / ONNX_FILE).exists():
        return "onnx"
    if (path / "adapter_config.json").exists():
        return "llm"
    return "encoder"


def load_classifier(ref: str, kind: str = "auto", base: str | None = None, *, batch_size: int = 64,
                    max_length: int | None = None, dtype: str = "auto", label_map: Mapping[str, str] | None = None):
    """A model with ``predict_proba(texts) -> (n, 3)`` over LABELS and a ``model_id``, from any model
    reference. ``dtype`` applies to the PyTorch backends (``auto``: bfloat16 where native).
    ``max_length`` and an adapter's ``base`` default to what the model's card says (finsent.core.cards).
    ``label_map``: a foreign classifier's label names -> ours (see :func:`label_matrix`)."""
    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "causal_lm":  # a causal LM zero-shot (hub id, directory, .gguf or pkg:// reference)
        return LLMClassifier(ref, dtype=dtype, batch_size=min(batch_size, 16))
    path = Path(resolve_model_ref(ref))
    if kind == "auto":
        kind = detect_kind(path)
    if kind == "llm":
        return LLMClassifier(base or adapter_base(path), str(path), dtype=dtype, batch_size=min(batch_size, 16))
    if kind == "onnx":
        return OnnxClassifier(str(path), batch_size=batch_size, max_length=max_length, label_map=label_map)
    if kind == "encoder":
        return EncoderClassifier(str(path), batch_size=batch_size, max_length=max_length, dtype=dtype,
                                 label_map=label_map)
    if kind == "embedding_head":
        from finsent.inference.embedding_head import EmbeddingHead
        return EmbeddingHead.load(path, batch_size=min(batch_size, 32))
    return EmbeddingZeroShot(str(path), batch_size=batch_size, max_length=max_length)
