"""Causal-LM path on tiny, locally built models: LoRA targets, 4-bit CPU gradients, SFT, scoring."""
from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from finsent.core.labelset import LABELS
from finsent.core.prompts import label_continuations, render_completion, render_prompt
from finsent.core.runtime import resolve_dtype
from finsent.core.schema import LLMHP, LoraSpec, Quantization
from finsent.inference.causal_lm import check_4bit_support, load_causal_lm, score_frames, score_labels
from finsent.training.lora import (add_lora, lora_target_names, merged_for_inference, sft_train, sft_trainer,
                                   shared_prefix_length)

from .conftest import build_tiny_llama



@pytest.fixture(scope="module")
def rows(fpb):
    frame = fpb.rows[fpb.rows["agreement"] == 1.0]
    return frame.groupby("label").head(12).reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, rows):
    """A 2-layer Llama with a word-level tokenizer built from the prompt template and the rows."""
    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny_lm"), rows["text"].tolist()))


def test_lora_covers_phi2_modules():
    from transformers import PhiConfig, PhiForCausalLM

    model = PhiForCausalLM(PhiConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=64))
    wrapped = add_lora(model, LoraSpec(r=4, alpha=8, target_modules="all-linear"), quantized=False)
    assert lora_target_names(wrapped) == {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}
    with pytest.raises(Exception, match="not found|no trainable|Target modules"):
        add_lora(PhiForCausalLM(model.config), LoraSpec(target_modules=["no_such_module"]), quantized=False)


def test_lora_initialisation_is_seeded(tiny_lm):
    def lora_a(seed, global_state):
        model, _ = load_causal_lm(tiny_lm)
        torch.manual_seed(global_state)  # whatever the global RNG went through before, the seed decides
        wrapped = add_lora(model, LoraSpec(r=4, alpha=8), quantized=False, seed=seed)
        return torch.cat([p.detach().flatten() for n, p in wrapped.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_a(7, 1), lora_a(7, 2)) and not torch.equal(lora_a(7, 1), lora_a(8, 1))


def test_prompt_and_label_tokens(tiny_lm):
    model, tok = load_causal_lm(tiny_lm)
    prompt = render_prompt(tok, "Sales rose .")
    assert prompt.endswith("Output:") and "<<<Sales rose .>>>" in prompt
    conts = label_continuations(tok, prompt)
    assert len(conts) == 3 and all(conts) and len({tuple(c) for c in conts}) == 3
    assert render_completion(tok, "positive") == " positive</s>"


def test_scoring_gives_one_valid_label_per_row(tiny_lm, rows):
    model, tok = load_causal_lm(tiny_lm)
    probs = score_labels(model, tok, rows["text"], batch_size=5)
    assert probs.shape == (len(rows), 3) and np.allclose(probs.sum(1), 1)
    labels = [LABELS[i] for i in probs.argmax(1)]
    assert len(labels) == len(rows) and set(labels) <= set(LABELS)
    # Batching, padding and the reused prefix cache do not change the scores.
    assert np.allclose(probs[:4], score_labels(model, tok, rows["text"][:4], batch_size=1), atol=1e-4)
    assert np.allclose(probs, score_labels(model, tok, rows["text"], batch_size=7, reuse_prefix=False), atol=1e-4)
    assert np.allclose(probs, score_labels(model, tok, rows["text"], batch_size=7, per_label=True), atol=1e-4)
    # Several frames sharing texts: each distinct text is scored once, every row gets its text's scores.
    frames = {"a": rows.iloc[:20], "b": rows.iloc[10:].sample(frac=1.0, random_state=0)}
    scored = score_frames(model, tok, frames, batch_size=5)
    assert np.allclose(scored["a"], probs[:20], atol=1e-4)
    assert np.allclose(scored["b"], probs[frames["b"].index], atol=1e-4)


def test_score_to_predictions_writes_what_evaluate_reads(tiny_lm, rows, tmp_path):
    """The LLM stages' writer (score_llm_base, train_llm): one predictions file per split, in evaluate's
    format, with the labels score_frames gives, and each split's accuracy in the report."""
    from finsent.inference.llm_scoring import score_to_predictions

    model, tok = load_causal_lm(tiny_lm)
    frames = {"a": rows.iloc[:15].reset_index(drop=True), "b": rows.iloc[15:].reset_index(drop=True)}
    report = score_to_predictions(model, tok, frames, name="base", out_dir=tmp_path, batch_size=5)
    expected = score_frames(model, tok, frames, batch_size=5)
    assert report["base_score_seconds"] >= 0
    for split, frame in frames.items():
        written = pd.read_csv(tmp_path / f"{split}.csv")
        predicted = np.array([LABELS[i] for i in expected[split].argmax(1)])
        assert written["text"].tolist() == frame["text"].tolist() and written["pred"].tolist() == predicted.tolist()
        assert set(written["model"]) == {"llm_base"}
        assert report[f"base_accuracy_{split}"] == pytest.approx((predicted == frame["label"].to_numpy()).mean(), abs=1e-4)


def test_llm_stages_write_every_split_evaluate_reads(root):
    """evaluate reads the LLM's predictions per split: llm_base from stage score_llm_base's output (zero-shot,
    before), llm_lora from train_llm's (after); each stage scores every split evaluate reads for its model."""
    from finsent.core.params import load_params, read_yaml
    from finsent.evaluation import evaluate

    params = load_params()
    stages = read_yaml(root / "dvc.yaml")["stages"]
    test_sets = evaluate.test_sets_from_params(params.evaluate.test_sets)
    for name, stage in {"llm_base": "score_llm_base", "llm_lora": "train_llm"}.items():
        spec = params.evaluate.models[name]
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stages[stage]["outs"]]
        assert spec.kind == "predictions" and any(spec.path.startswith(f"{out}/") for out in outs), (name, outs)
        assert {ts.split for ts in evaluate.test_sets_for(name, spec, test_sets)} <= set(params.llm.eval_splits)


def test_sft_loss_falls_and_adapter_learns(tiny_lm, rows, tmp_path):
    model, tok = load_causal_lm(tiny_lm)
    model = add_lora(model, LoraSpec(r=8, alpha=128, dropout=0.0), quantized=False)
    hp = LLMHP(model=tiny_lm, learning_rate=5e-3, batch_size=12, grad_accum=1, epochs=5, max_length=128, seed=0,
               warmup=0.0, scheduler="constant", logging_steps=1)
    summary = sft_train(model, tok, rows, None, hp, work_dir=tmp_path / "w", log_dir=tmp_path / "tb",
                        live_dir=tmp_path / "live")
    assert summary["steps"] == 5 * 3 and summary["last_loss"] < 0.5 * summary["first_loss"], summary
    curve = pd.read_csv(tmp_path / "live/plots/metrics/train/loss.tsv", sep="\t")  # DVCLive, by optimiser step
    assert curve["step"].tolist() == list(range(1, 16)) and abs(curve["loss"].iloc[-1] - summary["last_loss"]) < 1e-3
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    probs = score_labels(model, tok, rows["text"])
    acc = (np.array([LABELS[i] for i in probs.argmax(1)]) == rows["label"]).mean()
    assert acc > 0.6  # it fits its training rows: the loss really reaches the label tokens
    # Scoring with the adapter merged (the fast path) gives the same scores, and leaves it unmerged.
    with merged_for_inference(model):
        assert any(getattr(m, "merged", False) for m in model.modules())
        assert np.allclose(score_labels(model, tok, rows["text"]), probs, atol=1e-4)
    assert np.allclose(score_labels(model, tok, rows["text"]), probs, atol=1e-5)


def test_shared_prefix_step_gives_trls_loss_and_gradients(tiny_lm, rows, tmp_path):
    """The training step runs the prompts' common beginning once per batch: its loss and LoRA gradients
    must be those of trl's own SFTTrainer step on the same batch."""
    from trl import SFTTrainer

    model, tok = load_causal_lm(tiny_lm)
    model = add_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0), quantized=False, seed=0)
    hp = LLMHP(model=tiny_lm, learning_rate=1e-3, batch_size=6, epochs=1, max_length=128, seed=0)
    trainer = sft_trainer(model, tok, rows, None, hp, work_dir=tmp_path / "w", log_dir=tmp_path / "tb",
                          live_dir=tmp_path / "live")
    assert type(trainer).__name__ == "SharedPrefixSFTTrainer"
    batch = next(iter(trainer.get_train_dataloader()))
    n = shared_prefix_length(batch)
    prompts = [tok(render_prompt(tok, text), add_special_tokens=False)["input_ids"] for text in rows["text"]]
    template_start = len(os.path.commonprefix(prompts))  # system prompt + fence: shared by every row
    assert template_start > 10 and n >= template_start
    assert (batch["input_ids"][:, :n] == batch["input_ids"][:1, :n]).all()

    def step(compute_loss):
        model.train()
        model.zero_grad()
        loss = compute_loss(trainer, model, dict(batch))
        loss.backward()
        return float(loss), torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    shared_loss, shared_grad = step(type(trainer).compute_loss)
    plain_loss, plain_grad = step(SFTTrainer.compute_loss)
    assert shared_grad.abs().max() > 0
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert torch.allclose(shared_grad, plain_grad, rtol=1e-4, atol=1e-6)


def test_shared_prefix_stops_before_the_first_target_and_needs_a_plain_batch():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    labels = torch.full_like(ids, -100)
    assert shared_prefix_length({"input_ids": ids, "attention_mask": mask, "labels": labels}) == 3
    labels[0, 2] = 3  # a target at position 2 is predicted from position 1, so the suffix starts there
    assert shared_prefix_length({"input_ids": ids, "attention_mask": mask, "labels": labels}) == 1
    assert shared_prefix_length({"input_ids": ids.flip(1), "attention_mask": mask,
                                 "labels": torch.full_like(ids, -100)}) == 0
    assert shared_prefix_length({"input_ids": ids, "attention_mask": mask, "labels": labels,
                                 "position_ids": ids}) == 0  # padding-free batches are left to trl
    assert shared_prefix_length({"input_ids": ids[:1], "attention_mask": mask[:1], "labels": labels[:1]}) == 0


def test_4bit_cpu_lora_gradients_nonzero_after_eval_pass(tiny_lm, rows):
    pytest.importorskip("bitsandbytes")
    model, tok = load_causal_lm(tiny_lm, quantization=Quantization(load_in_4bit=True, compute_dtype="float32"))
    model = add_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0), quantized=True)
    with merged_for_inference(model):                    # never merged into 4-bit weights
        assert not any(getattr(m, "merged", False) for m in model.modules())
        score_labels(model, tok, rows["text"][:4])      # an inference pass first (the repack trigger)
    model.train()
    enc = tok(list(rows["text"][:4]), return_tensors="pt", padding=True)
    model(**enc, labels=enc["input_ids"]).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_dtype_auto_and_bad_names():
    assert resolve_dtype(None) is None and resolve_dtype("float32") is torch.float32
    assert resolve_dtype("auto") in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="use auto, float32"):
        resolve_dtype("float33")


def test_4bit_without_bitsandbytes_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(RuntimeError, match="bitsandbytes cannot be used here.*load_in_4bit to false"):
        check_4bit_support()
