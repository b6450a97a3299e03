"""Teacher labelling: gold, a local model, or any OpenAI-compatible chat endpoint.

The OpenAI teacher asks for structured output constrained to the three labels, with the post
fenced as untrusted data (finsent.prompts); an answer outside the label set is quarantined (never
defaulted to neutral). Requests run with bounded concurrency and retry 429 / 5xx / timeouts with
exponential backoff that honours Retry-After. Every answer is written to a SQLite cache keyed by
(teacher, prompt version, text) the moment it arrives, so a killed run loses nothing and a re-run
pays for nothing twice. Tokens and cost are counted per answer (prices from params).
"""
from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from .labels import LABELS, normalise_label
from .prompts import PROMPT_VERSION, messages


class TeacherUnavailable(RuntimeError):
    """The teacher cannot run here (no API key, no server): reported as skipped, not a crash."""


class BatchPending(RuntimeError):
    """A submitted Batch API job has not finished yet; its id is kept and the next run collects it."""


# ---------------------------------------------------------------------------------------------
# Answers and their cache
# ---------------------------------------------------------------------------------------------

@dataclass
class Answer:
    label: str | None                 # one of LABELS, or None when quarantined / failed
    status: str                       # ok | quarantined (answered outside the label set) | failed (gave up)
    reason: str = ""
    confidence: dict[str, float] | None = None   # probability per label, where the teacher gives them
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False


def cache_key(teacher_id: str, text: str) -> str:
    return hashlib.sha256(f"{teacher_id}\x00{PROMPT_VERSION}\x00{text}".encode("utf-8")).hexdigest()


class LabelCache:
    """Answers by content hash in SQLite (WAL, one commit per answer: a kill -9 loses at most the
    requests in flight). Failed answers are not kept, so a re-run tries them again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, teacher TEXT, prompt_version TEXT,"
                        " answer TEXT, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, teacher TEXT, keys TEXT,"
                        " status TEXT, created REAL)")
        self.db.commit()

    def get(self, key: str) -> Answer | None:
        with self._lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Answer(**{**json.loads(row[0]), "cached": True})

    def put(self, key: str, teacher_id: str, answer: Answer) -> None:
        if answer.status == "failed":
            return
        record = json.dumps({k: v for k, v in asdict(answer).items() if k != "cached"})
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                            (key, teacher_id, PROMPT_VERSION, record, time.time()))
            self.db.commit()

    def add_batch(self, batch_id: str, teacher_id: str, keys: list[str]) -> None:
        with self._lock:
            self.db.execute("INSERT INTO batches VALUES (?, ?, ?, 'submitted', ?)",
                            (batch_id, teacher_id, json.dumps(keys), time.time()))
            self.db.commit()

    def pending_batches(self, teacher_id: str) -> list[str]:
        with self._lock:
            rows = self.db.execute("SELECT id FROM batches WHERE teacher = ? AND status = 'submitted' ORDER BY created",
                                   (teacher_id,)).fetchall()
        return [r[0] for r in rows]

    def finish_batch(self, batch_id: str, status: str) -> None:
        with self._lock:
            self.db.execute("UPDATE batches SET status = ? WHERE id = ?", (status, batch_id))
            self.db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------------------------------------
# Structured output, parsing, confidence, cost
# ---------------------------------------------------------------------------------------------

def response_format() -> dict[str, Any]:
    """JSON schema that allows exactly one of the labels."""
    return {"type": "json_schema", "json_schema": {"name": "sentiment", "strict": True, "schema": {
        "type": "object", "properties": {"label": {"type": "string", "enum": list(LABELS)}},
        "required": ["label"], "additionalProperties": False}}}


def parse_label(content: str | None) -> tuple[str | None, str]:
    """(label, "") for a valid answer, (None, reason) otherwise. Never guesses a default."""
    if content is None:
        return None, "empty answer"
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        value = content
    if isinstance(value, dict):
        value = value.get("label")
    label = normalise_label(value) if isinstance(value, str) else None
    if label:
        return label, ""
    return None, f"answer outside the label set: {content[:80]!r}"


def confidence_from_logprobs(logprobs) -> dict[str, float] | None:
    """Probabilities of the three labels from the label token's top_logprobs (normalised over the
    labels found; a label missing from the top-k gets 0)."""
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    for token in content or []:
        if token.token.strip().strip('"').lower() in LABELS:
            probs = {lab: 0.0 for lab in LABELS}
            for alt in token.top_logprobs or [token]:
                name = alt.token.strip().strip('"').lower()
                if name in probs:
                    probs[name] = max(probs[name], math.exp(alt.logprob))
            total = sum(probs.values())
            return {k: v / total for k, v in probs.items()} if total > 0 else None
    return None


def price_of(prices: Mapping[str, Mapping[str, float]], model: str) -> tuple[float, float]:
    """(USD per 1M input tokens, per 1M output tokens); unknown models cost 0 (a local server)."""
    p = prices.get(model) or {}
    return float(p.get("input_per_1m", 0.0)), float(p.get("output_per_1m", 0.0))


def approx_tokens(text: str) -> int:
    """Token count without the model's tokenizer: about 4 characters per token (OpenAI's rule of thumb).
    The cost estimate and `finsent serve`'s ``usage`` both count this way."""
    return max(1, math.ceil(len(text) / 4))


def cost_usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float]) -> float:
    """USD for a token count at (input, output) USD per 1M tokens."""
    return prompt_tokens * price[0] / 1e6 + completion_tokens * price[1] / 1e6


def usage_totals(answers: Sequence[Answer]) -> dict[str, Any]:
    """Prompt and completion tokens and USD summed over answers (for metrics and the ledger)."""
    return {"prompt_tokens": sum(a.prompt_tokens for a in answers),
            "completion_tokens": sum(a.completion_tokens for a in answers),
            "cost_usd": round(sum(a.cost_usd for a in answers), 6)}


def estimate_cost(texts: Sequence[str], price: tuple[float, float], completion_tokens: int = 8) -> dict[str, float]:
    """Before a run: tokens (about 4 characters each, prompt included, 4 more per request for the
    chat format) and USD for ``texts``."""
    prompt_tokens = sum(approx_tokens("".join(m["content"] for m in messages(t))) + 4 for t in texts)
    out_tokens = completion_tokens * len(texts)
    return {"rows": len(texts), "prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
            "usd": round(cost_usd(prompt_tokens, out_tokens, price), 6)}


def retry_after_seconds(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After in seconds or as a date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            date = email.utils.parsedate_to_datetime(value)
            return max(0.0, date.timestamp() - time.time()) if date else None
    return None


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------

@dataclass
class OpenAITeacher:
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 30.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    logprobs: bool = True
    top_logprobs: int = 3
    mode: str = "online"              # online | batch (the Batch API: half the price, up to 24 h)
    batch_poll_s: float = 10.0
    batch_timeout_s: float = 3600.0   # then stop; the next run resumes the same batch
    price: tuple[float, float] = (0.0, 0.0)
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "retries": 0})

    @property
    def teacher_id(self) -> str:
        return f"openai:{self.model}@{self.base_url or 'https://api.openai.com/v1'}"

    def client(self):
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env)
        if not key:
            if self.base_url is None:
                raise TeacherUnavailable(f"no API key: set the environment variable {self.api_key_env} "
                                         f"(never put it in params.yaml)")
            key = "not-needed"  # a local OpenAI-compatible server without authentication
        return AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout_s)

    async def preflight(self, client) -> None:
        """Fail fast (as TeacherUnavailable) when the endpoint cannot be reached or refuses the key."""
        import openai

        try:
            await client.models.list(timeout=min(self.timeout_s, 10.0))
        except openai.NotFoundError:
            return  # some compatible servers have no /models; the first request will tell
        except (openai.APIConnectionError, openai.APITimeoutError, openai.AuthenticationError,
                openai.PermissionDeniedError) as exc:
            raise TeacherUnavailable(f"{self.base_url or 'api.openai.com'}: {type(exc).__name__}: "
                                     f"{str(exc)[:160]}") from None

    def request_body(self, text: str) -> dict[str, Any]:
        """The chat request for one post (online, and each line of a Batch API file)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages(text), "response_format": response_format(),
                                "temperature": 0, "max_completion_tokens": 16}
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def answer_from(self, completion, attempts: int, latency_s: float, price_factor: float = 1.0) -> Answer:
        choice = completion.choices[0]
        label, reason = parse_label(choice.message.content)
        usage = completion.usage
        pt, ct = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        return Answer(label, "ok" if label else "quarantined", reason,
                      confidence_from_logprobs(choice.logprobs) if label else None, pt, ct,
                      round(cost_usd(pt, ct, self.price) * price_factor, 8),
                      latency_s, attempts)

    async def ask(self, client, text: str) -> Answer:
        import openai

        start, attempt = time.perf_counter(), 0
        last_error = ""
        while attempt <= self.max_retries:
            attempt += 1
            self.stats["requests"] += 1
            try:
                r = await client.chat.completions.create(**self.request_body(text))
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as exc:
                last_error = f"{type(exc).__name__}: {str(exc)[:120]}"
                if attempt > self.max_retries:
                    break
                self.stats["retries"] += 1
                wait = retry_after_seconds(exc)
                if wait is None:
                    wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())
                await asyncio.sleep(wait)
                continue
            except openai.APIStatusError as exc:  # 400/401/403/404...: retrying will not help
                return Answer(None, "failed", f"HTTP {exc.status_code}: {str(exc)[:160]}", attempts=attempt,
                              latency_s=time.perf_counter() - start)
            return self.answer_from(r, attempt, time.perf_counter() - start)
        return Answer(None, "failed", f"gave up after {attempt} attempts ({last_error})", attempts=attempt,
                      latency_s=time.perf_counter() - start)

    def label(self, texts: Sequence[str], cache: LabelCache) -> list[Answer]:
        if self.mode == "batch":
            return asyncio.run(self._label_batch(list(texts), cache))
        return asyncio.run(self._label(list(texts), cache))

    # -- Batch API: half the price, answers within the completion window ---------------------------
    async def _label_batch(self, texts: list[str], cache: LabelCache) -> list[Answer]:
        client = self.client()
        for batch_id in cache.pending_batches(self.teacher_id):  # resume what an earlier run submitted
            await self._finish_batch(client, cache, batch_id)
        keys = {cache_key(self.teacher_id, t): t for t in texts}
        todo = {k: t for k, t in keys.items() if cache.get(k) is None}
        if todo:
            await self.preflight(client)
            lines = [json.dumps({"custom_id": k, "method": "POST", "url": "/v1/chat/completions",
                                 "body": self.request_body(t)}) for k, t in todo.items()]
            upload = await client.files.create(file=("requests.jsonl", ("\n".join(lines) + "\n").encode()),
                                               purpose="batch")
            batch = await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            cache.add_batch(batch.id, self.teacher_id, list(todo))
            self.stats["requests"] += 1
            print(f"label: submitted batch {batch.id} ({len(lines)} requests); an interrupted run resumes it")
            await self._finish_batch(client, cache, batch.id)
        await client.close()
        out = []
        for t in texts:
            answer = cache.get(cache_key(self.teacher_id, t))
            out.append(answer or Answer(None, "failed", "no answer for this post in the batch output"))
        return out

    async def _finish_batch(self, client, cache: LabelCache, batch_id: str) -> None:
        from openai.types.chat import ChatCompletion

        deadline = time.monotonic() + self.batch_timeout_s
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise BatchPending(f"batch {batch_id} is still {batch.status} after {self.batch_timeout_s:.0f} s; "
                                   f"re-run the stage later to collect it (nothing is submitted twice)")
            await asyncio.sleep(self.batch_poll_s)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = (await client.files.content(file_id)).text
            for line in filter(None, map(str.strip, content.splitlines())):
                record = json.loads(line)
                response = record.get("response") or {}
                if response.get("status_code") == 200 and response.get("body"):
                    completion = ChatCompletion.model_validate(response["body"])
                    cache.put(record["custom_id"], self.teacher_id, self.answer_from(completion, 1, 0.0, 0.5))
        cache.finish_batch(batch_id, batch.status)

    async def _label(self, texts: list[str], cache: LabelCache) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(texts)
        todo = []
        for i, text in enumerate(texts):
            answers[i] = cache.get(cache_key(self.teacher_id, text))
            if answers[i] is None:
                todo.append(i)
        client = self.client()
        if todo:
            await self.preflight(client)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> None:
            async with gate:
                answer = await self.ask(client, texts[i])
            cache.put(cache_key(self.teacher_id, texts[i]), self.teacher_id, answer)  # as it arrives
            answers[i] = answer

        tasks = [asyncio.create_task(one(i)) for i in todo]
        for task in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=f"label {self.model}", unit="post"):
            await task
        await client.close()
        return answers  # type: ignore[return-value]


class LocalTeacher:
    """Any model reference the project can load (encoder, LoRA adapter, zero-shot embedding)."""

    def __init__(self, model: str, kind: str = "auto"):
        from .predict import load_classifier

        self.model, self.kind = model, kind
        self.classifier = load_classifier(model, kind)
        self.stats = {"requests": 0, "retries": 0}

    @property
    def teacher_id(self) -> str:
        return f"local:{self.kind}:{self.model}"

    def label(self, texts: Sequence[str], cache: LabelCache) -> list[Answer]:
        start = time.perf_counter()
        probs = self.classifier.predict_proba(list(texts)) if len(texts) else np.zeros((0, 3))
        per_row = (time.perf_counter() - start) / max(1, len(texts))
        return [Answer(LABELS[int(p.argmax())], "ok", confidence=dict(zip(LABELS, map(float, p))), latency_s=per_row)
                for p in probs]


class GoldTeacher:
    """The dataset's own labels: the offline default, so `dvc repro` needs no key."""

    teacher_id = "gold"
    stats = {"requests": 0, "retries": 0}

    def __init__(self, gold: Sequence[str]):
        self.gold = list(gold)

    def label(self, texts: Sequence[str], cache: LabelCache) -> list[Answer]:
        return [Answer(g, "ok", confidence={lab: float(lab == g) for lab in LABELS}) for g in self.gold]


def make_teacher(name: str, spec: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]], gold=None):
    """A teacher from params: ``gold``, ``local`` ({model, kind}) or ``openai`` ({model, base_url, ...})."""
    if name == "gold":
        return GoldTeacher(gold)
    if name == "local":
        return LocalTeacher(spec["model"], spec.get("kind", "auto"))
    if name == "openai":
        keys = ("model", "base_url", "api_key_env", "concurrency", "max_retries", "timeout_s", "backoff_s",
                "max_backoff_s", "logprobs", "top_logprobs", "mode", "batch_poll_s", "batch_timeout_s")
        return OpenAITeacher(**{k: spec[k] for k in keys if k in spec and spec[k] is not None},
                             price=price_of(prices, spec["model"]))
    raise ValueError(f"params.yaml label.teacher={name!r}: use gold, local or openai")


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------

def agreement(gold: Sequence[str], answers: Sequence[Answer]) -> dict[str, Any]:
    """Teacher vs gold on the rows the teacher labelled: accuracy, macro-F1, Cohen's kappa, confusion."""
    from sklearn.metrics import cohen_kappa_score

    from .metrics import compute_metrics

    pairs = [(g, a.label) for g, a in zip(gold, answers) if a.label is not None]
    if not pairs:
        return {"n": 0}
    y, p = zip(*pairs)
    m = compute_metrics(y, p)
    return {"n": len(pairs), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "cohen_kappa": round(float(cohen_kappa_score(y, p, labels=list(LABELS))), 4),
            "confusion_matrix": m["confusion_matrix"]}


def coverage_table(gold: Sequence[str], answers: Sequence[Answer],
                   thresholds: Sequence[float] = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> list[dict]:
    """Keep only answers whose top-label confidence reaches a threshold: coverage and accuracy."""
    rows = []
    scored = [(max(a.confidence.values()), a.label == g) for g, a in zip(gold, answers) if a.label and a.confidence]
    for t in thresholds:
        kept = [ok for conf, ok in scored if conf >= t]
        rows.append({"threshold": t, "coverage": round(len(kept) / max(1, len(answers)), 4),
                     "accuracy": round(float(np.mean(kept)), 4) if kept else None, "rows": len(kept)})
    return rows
