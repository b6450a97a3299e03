"""The one typed definition of params.yaml: every section, its keys, their types, defaults and help.

:func:`finsent.core.params.load_params` validates the whole file against :class:`Params` before a
stage does anything else, so a typo (``dvc exp run -S train.hp_sett=fast``) stops the stage at once
with the key's path, the keys allowed there and the closest one. Defaults live here and nowhere
else: package code reads attributes, never ``.get(key, default)``.
"""
from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def closest(key: str, allowed: list[str]) -> str | None:
    match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    return match[0] if match else None


class Section(BaseModel):
    """A params.yaml mapping: unknown keys are an error naming the allowed keys and the closest one."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            unknown = [str(k) for k in data if k not in allowed]
            if unknown:
                hints = [f"'{k}'" + (f" (did you mean '{c}'?)" if (c := closest(k, allowed)) else "") for k in unknown]
                raise ValueError(f"unknown key {', '.join(hints)}; allowed keys: {', '.join(allowed)}")
        return data


# ---- convert ---------------------------------------------------------------------------------------

class RawFile(Section):
    path: str = Field(description="raw file, relative to the project root")
    agreement: float = Field(0.5, description="PhraseBank: the annotator-agreement level of this file")
    split: str = Field("", description="a split the publisher made (e.g. test), kept as official_split")


class Dataset(Section):
    format: Literal["phrasebank", "csv", "parquet", "jsonl", "pickle"] = Field(description="how the raw files are read")
    encoding: str | None = Field(None, description="text encoding (default latin-1 for phrasebank, else utf-8)")
    source: str | None = Field(None, description="provenance written to every row (default: the dataset name)")
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = Field(None, description="raw label -> negative/neutral/positive")
    files: list[RawFile] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _map_keys_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("label_map"), dict):  # YAML reads 0: as an int
            data = {**data, "label_map": {str(k): v for k, v in data["label_map"].items()}}
        return data


# ---- split -----------------------------------------------------------------------------------------

class Fractions(Section):
    """Share of each part; a part left out gets no rows."""

    train: float = 0.0
    val: float = 0.0
    test: float = 0.0


class PerClass(Section):
    train: int = 300
    test: int = 300
    val: int = 50


class SplitSpec(Section):
    dataset: str = Field(description="a key of `datasets`")
    min_agreement: float | None = Field(None, description="keep rows with agreement >= this (PhraseBank)")
    strategy: Literal["stratified", "balanced"] = "stratified"
    fractions: Fractions = Field(default_factory=lambda: Fractions(train=0.8, val=0.1, test=0.1),
                                 description="stratified: share of each part")
    per_class: PerClass = Field(default_factory=PerClass, description="balanced: rows per class and part")
    use_official_test: bool = Field(True, description="the publisher's test file is the test part")


# ---- train (encoder) ---------------------------------------------------------------------------------

class TrainSection(Section):
    model: str = Field(description="pkg://<package>/<path>, a local directory or a hub id")
    hp_set: str = Field(description="a key of `hp_sets`")
    splits: list[str] = Field(description="train on the union of these splits' train parts")
    labels: Literal["gold", "teacher"] = Field("gold", description="gold labels, or the label stage's pool")
    early_stopping_patience: int = 2
    max_train_rows: int | None = None
    max_val_rows: int | None = None
    max_steps: int | None = None


class TrainerHP(Section):
    """What every HF Trainer run shares (the encoder and the LoRA SFT)."""

    learning_rate: float
    batch_size: int
    grad_accum: int = 1
    epochs: float
    warmup: float = Field(description="a fraction (< 1) of the steps, or a step count")
    weight_decay: float = 0.0
    max_length: int = Field(description="tokens per example; carried in the model card to every consumer")
    seed: int
    bf16: bool = Field(False, description="bf16 mixed precision (CUDA only)")
    scheduler: str = Field("linear", description="transformers lr_scheduler_type")
    logging_steps: int = 25


class EncoderHP(TrainerHP):
    head_lr_multiplier: float = Field(1.0, description="the new classifier head learns this many times faster")


# ---- export ----------------------------------------------------------------------------------------

class Int8Spec(Section):
    per_channel: bool = True
    reduce_range: bool = True
    keep_fp32: list[str] = Field(default_factory=list, description="regexes of MatMul nodes kept in fp32")
    batch_size: int | None = Field(1, description="pinned batch size (dynamic int8 scales per batch)")


class ExportCheck(Section):
    splits: list[str] = Field(default_factory=lambda: ["fpb", "tweets"])
    n: int | None = None


class ExportSection(Section):
    model: str
    out: str
    name: str | None = Field(None, description="model id prefix (default: the model directory's name)")
    opset: int = 17
    int8: Int8Spec = Field(default_factory=Int8Spec)
    check: ExportCheck = Field(default_factory=ExportCheck)


# ---- evaluate ----------------------------------------------------------------------------------------

class TestSetSpec(Section):
    split: str
    min_agreement: float | None = None
    models: list[str] | None = Field(None, description="only these models are scored on it")


class _EvalModel(Section):
    reference: str | None = Field(None, description="another way to run this model: compared in backends.json")
    test_sets: list[str] | None = Field(None, description="only these test sets")


class MajorityModel(_EvalModel):
    kind: Literal["majority"]


class TfidfModel(_EvalModel):
    kind: Literal["tfidf"]
    C: float = 4.0


class ZeroShotModel(_EvalModel):
    kind: Literal["zeroshot_embedding"]
    model: str
    temperature: float = 0.05
    batch_size: int = 64
    max_length: int | None = Field(None, description="override; default: the model's card (or the fallback)")


class EncoderModel(_EvalModel):
    kind: Literal["encoder", "onnx"]
    model: str
    dtype: Dtype = "float32"
    batch_size: int = 64
    max_length: int | None = Field(None, description="override; default: the model's card")


class PredictionsModel(_EvalModel):
    kind: Literal["predictions"]
    path: str


def _tag(field: str):
    def pick(value: Any) -> str | None:
        raw = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"{field}={raw}" if raw is not None else None
    return pick


EvalModel = Annotated[Union[
    Annotated[MajorityModel, Tag("kind=majority")], Annotated[TfidfModel, Tag("kind=tfidf")],
    Annotated[ZeroShotModel, Tag("kind=zeroshot_embedding")], Annotated[EncoderModel, Tag("kind=encoder")],
    Annotated[EncoderModel, Tag("kind=onnx")], Annotated[PredictionsModel, Tag("kind=predictions")],
], Discriminator(_tag("kind"), custom_error_type="invalid_kind",
                 custom_error_message="kind must be one of majority, tfidf, zeroshot_embedding, encoder, onnx, "
                                      "predictions")]


class EvaluateSection(Section):
    max_rows: int | None = Field(None, description="a stratified subset of each test split (null = all)")
    backend_tolerance: float = 0.005
    test_sets: dict[str, TestSetSpec]
    models: dict[str, EvalModel]


# ---- train_llm -------------------------------------------------------------------------------------

class Quantization(Section):
    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Dtype = "bfloat16"


class LoraSpec(Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


class LLMHP(TrainerHP):
    model: str = Field(description="hub id, local directory, .gguf file or pkg:// reference")
    quantization: Quantization = Field(default_factory=Quantization)
    dtype: Dtype | None = Field(None, description="unquantised weights' dtype (auto: bf16 where native)")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    warmup: float = 0.03
    scheduler: str = "cosine"
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    logging_steps: int = 5


class LLMSection(Section):
    hp_set: str = Field(description="a key of `llm_hp_sets`")
    train_split: str
    eval_splits: list[str]
    max_train_rows: int | None = None
    max_val_rows: int | None = None
    max_steps: int | None = None
    score_batch_size: int = 16


# ---- label / compare -----------------------------------------------------------------------------------

class Price(Section):
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0


class OpenAISpec(Section):
    """An OpenAI-compatible chat endpoint as a teacher; the key comes from the environment only."""

    model: str
    base_url: str | None = Field(None, description="null = api.openai.com")
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 30.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    logprobs: bool = True
    top_logprobs: int = 3
    mode: Literal["online", "batch"] = Field("online", description="batch: the Batch API, half price")
    batch_poll_s: float = 10.0
    batch_timeout_s: float = 3600.0


class LocalSpec(Section):
    """A model the project can load (finsent.inference.classifiers.load_classifier) as a teacher."""

    model: str
    kind: Literal["auto", "encoder", "onnx", "llm", "causal_lm", "zeroshot"] = "auto"


class Sample(Section):
    split: str
    part: Literal["train", "val", "test"]
    n: int | None = None


class LabelSection(Section):
    teacher: Literal["gold", "local", "openai"]
    pool: Sample
    cache_dir: str = "data/cache"
    max_cost_usd: float | None = None
    openai: OpenAISpec | None = None
    local: LocalSpec | None = None
    prices: dict[str, Price] = Field(default_factory=dict)


class LocalCandidate(LocalSpec):
    teacher: Literal["local"]


class OpenAICandidate(OpenAISpec):
    teacher: Literal["openai"]


Candidate = Annotated[Union[Annotated[LocalCandidate, Tag("teacher=local")],
                            Annotated[OpenAICandidate, Tag("teacher=openai")]],
                      Discriminator(_tag("teacher"), custom_error_type="invalid_teacher",
                                    custom_error_message="teacher must be local or openai")]


class CompareSection(Section):
    gold: Sample
    metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    candidates: dict[str, Candidate]


# ---- the whole file --------------------------------------------------------------------------------

class Params(Section):
    seed: int = 42
    datasets: dict[str, Dataset]
    splits: dict[str, SplitSpec]
    train: TrainSection
    hp_sets: dict[str, EncoderHP]
    export: ExportSection
    evaluate: EvaluateSection
    llm: LLMSection
    llm_hp_sets: dict[str, LLMHP]
    label: LabelSection
    compare: CompareSection

    @model_validator(mode="after")
    def _names_resolve(self) -> "Params":
        checks = [("train.hp_set", self.train.hp_set, self.hp_sets), ("llm.hp_set", self.llm.hp_set, self.llm_hp_sets)]
        checks += [(f"splits.{n}.dataset", s.dataset, self.datasets) for n, s in self.splits.items()]
        checks += [("train.splits", s, self.splits) for s in self.train.splits]
        checks += [(f"evaluate.test_sets.{n}.split", t.split, self.splits) for n, t in self.evaluate.test_sets.items()]
        for key, value, options in checks:
            if value not in options:
                hint = closest(value, list(options))
                raise ValueError(f"{key}: '{value}' is not defined" + (f" (did you mean '{hint}'?)" if hint else "")
                                 + f"; defined: {', '.join(options)}")
        teacher_spec = getattr(self.label, self.label.teacher, None) if self.label.teacher != "gold" else True
        if teacher_spec is None:
            raise ValueError(f"label.teacher: '{self.label.teacher}' needs a label.{self.label.teacher} section")
        return self

    @property
    def hp(self) -> EncoderHP:
        """The encoder hyperparameter set named by train.hp_set."""
        return self.hp_sets[self.train.hp_set]

    @property
    def llm_hp(self) -> LLMHP:
        """The LLM hyperparameter set named by llm.hp_set."""
        return self.llm_hp_sets[self.llm.hp_set]
