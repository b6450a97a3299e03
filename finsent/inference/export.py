"""Export the fine-tuned encoder to ONNX Runtime, and quantize it to dynamic int8.

Each precision is a self-contained directory (``model.onnx``, tokenizer, ``config.json``, and
``finsent_model.json`` naming it), so ``finsent predict --model <dir>``, ``finsent serve --model
<dir>`` and evaluate's ``kind: onnx`` load it like any other model reference.

int8 is ONNX Runtime's dynamic quantization of the linear layers (MatMul weights to int8, activations
quantized per batch at run time): per-channel weight scales keep the accuracy close to fp32, and
``reduce_range`` (7-bit weights) avoids the u8 x s8 saturation of CPUs without VNNI, so one file
behaves the same on any x86 CPU. Embeddings, LayerNorm and softmax stay in fp32.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from finsent.core.cards import read_card, write_card
from finsent.core.refs import resolve_model_ref
from finsent.evaluation.metrics import agreement as label_agreement
from finsent.evaluation.metrics import probs_to_labels
from finsent.inference.classifiers import ONNX_FILE

# What `dvc exp show` compares of the export report: each export's label agreement with PyTorch fp32.
HEADLINE = ("*.label_agreement",)
SUPPORT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _copy_support(src: Path, dst: Path) -> None:
    for name in SUPPORT_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def export_onnx(model_ref: str, out_dir: str | Path, *, name: str, opset: int = 17) -> dict[str, Any]:
    """Trace a sequence classifier to ``out_dir/model.onnx`` (float32) with dynamic batch and sequence
    axes; returns the model card."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = Path(resolve_model_ref(model_ref))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(src)
    # eager attention traces to plain MatMul/Softmax ops that every ONNX Runtime build runs
    model = AutoModelForSequenceClassification.from_pretrained(src, attn_implementation="eager").eval()
    sample = tokenizer(["Operating profit rose to EUR 13.1 mn .", "Shares fell"], padding=True, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]
    axes = {k: {0: "batch", 1: "sequence"} for k in names} | {"logits": {0: "batch"}}
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        # The tracer warns about Python branches on shapes in the attention-mask code; the export is
        # checked against PyTorch on real posts of many lengths (export stage, tests) instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(sample[k] for k in names), str(out / ONNX_FILE), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    _copy_support(src, out)
    # What the trained model's card says (base model, max length, label order, data) carries over.
    inherited = {k: v for k, v in read_card(src).items() if k not in ("model_id", "kind", "dtype")}
    return write_card(out, **{**inherited, "model_id": f"{name}:onnx-fp32", "kind": "onnx", "precision": "fp32",
                              "source": str(model_ref), "opset": opset, "inputs": names,
                              "export_s": round(time.perf_counter() - start, 2), "size_mb": size_mb(out / ONNX_FILE)})


def quantize_int8(fp32_dir: str | Path, out_dir: str | Path, *, name: str, per_channel: bool = True,
                  reduce_range: bool = True, keep_fp32: Sequence[str] = (), batch_size: int | None = 1) -> dict[str, Any]:
    """Dynamic int8 quantization of an fp32 export's MatMul weights into ``out_dir``; returns the card.

    Dynamic quantization scales activations by one range per input tensor, i.e. per batch (padding
    included), so a post's probabilities depend on the posts batched with it. ``batch_size: 1`` in
    the card (the default) makes every loader run one post at a time: the same post always gets the
    same answer, at ~2/3 of batched int8's speed (bench/predict.py); None leaves batching to the caller.
    ``keep_fp32``: regular expressions; MatMul nodes whose name matches one stay in fp32 (the most
    quantization-sensitive layers, chosen on validation data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, out = Path(fp32_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # constant folding + shape inference first, as ONNX Runtime recommends before quantizing
        quant_pre_process(str(src / ONNX_FILE), str(prepared), skip_symbolic_shape=True)
        matmuls = matmul_names(prepared)
        excluded = [n for n in matmuls if any(re.search(p, n) for p in keep_fp32)]
        unmatched = [p for p in keep_fp32 if not any(re.search(p, n) for n in matmuls)]
        if unmatched:
            raise ValueError(f"params.yaml export.int8.keep_fp32: {unmatched} match no MatMul node of {src / ONNX_FILE} "
                             f"(names look like {matmuls[0]!r}); fix the patterns")
        quantize_dynamic(str(prepared), str(out / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=reduce_range, op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
                         extra_options={"MatMulConstBOnly": True})
    _copy_support(src, out)
    inherited = {k: v for k, v in read_card(src).items() if k not in ("export_s", "size_mb", "opset", "inputs")}
    return write_card(out, **{**inherited, "model_id": f"{name}:onnx-int8", "precision": "int8",
                              "source": str(fp32_dir),
                              "quantization": {"method": "dynamic", "weights": "int8", "per_channel": per_channel,
                                               "reduce_range": reduce_range, "ops": ["MatMul"], "kept_fp32": excluded},
                              "batch_size": batch_size, "quantize_s": round(time.perf_counter() - start, 2),
                              "size_mb": size_mb(out / ONNX_FILE)})


def matmul_names(path: str | Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMul"]


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How close two models' probabilities are: share of equal labels, largest probability difference."""
    same = label_agreement(probs_to_labels(reference), probs_to_labels(candidate))["accuracy"]
    return {"label_agreement": same,
            "max_abs_prob_diff": round(float(np.abs(reference - candidate).max()), 6),
            "mean_abs_prob_diff": round(float(np.abs(reference - candidate).mean()), 6)}


def check_exports(reference, candidates: Mapping[str, Any], texts: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each candidate classifier against the reference (PyTorch fp32) on ``texts``."""
    ref = reference.predict_proba(texts)
    return {name: fidelity(ref, clf.predict_proba(texts)) for name, clf in candidates.items()}
