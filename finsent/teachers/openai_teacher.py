"""The OpenAI teacher: any OpenAI-compatible chat endpoint, online or through the Batch API.

It asks for structured output constrained to the three labels, with the post
fenced as untrusted data (finsent.core.prompts); an answer outside the label set is quarantined (never
defaulted to neutral). Requests run with bounded concurrency and retry 429 / 5xx / timeouts with
exponential backoff that honours Retry-After. Every answer is written to a SQLite cache keyed by
(teacher, prompt version, text) the moment it arrives, so a killed run loses nothing and a re-run
pays for nothing twice. Tokens and cost are counted per answer (prices from params).
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import random
import re
import time
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from finsent.core.labelset import LABELS, normalise_label
from finsent.core.prompts import messages
from finsent.core.schema import OpenAISpec
from finsent.teachers.answers import Answer, BatchPending, TeacherUnavailable
from finsent.teachers.cache import LabelCache, cache_key
from finsent.teachers.cost import cost_usd, estimate_cost, mode_factor


# ---------------------------------------------------------------------------------------------
# Structured output, parsing, confidence, retries
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


def redact(message: str) -> str:
    """An error message without API keys in it (providers echo part of a wrong key back)."""
    keys = [v for k, v in os.environ.items() if v and len(v) >= 12 and ("KEY" in k or "TOKEN" in k)]
    for key in keys:
        message = message.replace(key, "***")
    return re.sub(r"\b(sk|rk|pk)-[A-Za-z0-9_*\-]{6,}", r"\1-***", message)


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
# The teacher
# ---------------------------------------------------------------------------------------------

class OpenAITeacher:
    """Any OpenAI-compatible chat endpoint (params: :class:`finsent.core.schema.OpenAISpec`)."""

    def __init__(self, spec: OpenAISpec, price: tuple[float, float] = (0.0, 0.0)):
        self.spec, self.price = spec, price
        self.stats = {"requests": 0, "retries": 0}

    @property
    def teacher_id(self) -> str:
        return f"openai:{self.spec.model}@{self.spec.base_url or 'https://api.openai.com/v1'}"

    def client(self):
        from openai import AsyncOpenAI

        key = os.environ.get(self.spec.api_key_env)
        if not key:
            if self.spec.base_url is None:
                raise TeacherUnavailable(f"no API key: set the environment variable {self.spec.api_key_env} "
                                         f"(never put it in params.yaml)")
            key = "not-needed"  # a local OpenAI-compatible server without authentication
        return AsyncOpenAI(base_url=self.spec.base_url, api_key=key, max_retries=0, timeout=self.spec.timeout_s)

    async def preflight(self, client) -> None:
        """Fail fast (as TeacherUnavailable) when the endpoint cannot be reached or refuses the key."""
        import openai

        try:
            await client.models.list(timeout=min(self.spec.timeout_s, 10.0))
        except openai.NotFoundError:
            return  # some compatible servers have no /models; the first request will tell
        except (openai.APIConnectionError, openai.APITimeoutError, openai.AuthenticationError,
                openai.PermissionDeniedError) as exc:
            raise TeacherUnavailable(f"{self.spec.base_url or 'api.openai.com'}: {type(exc).__name__}: "
                                     f"{redact(str(exc))[:160]}") from None

    def estimate(self, texts: Sequence[str], cache: LabelCache) -> dict[str, Any]:
        """Before a run: the posts not in the cache, their tokens and USD in this mode."""
        missing = [t for t in texts if cache.get(cache_key(self.teacher_id, t)) is None]
        return {**estimate_cost(missing, self.price, factor=mode_factor(self.spec.mode)),
                "cached": len(texts) - len(missing), "mode": self.spec.mode, "price_per_1m": list(self.price)}

    def request_body(self, text: str) -> dict[str, Any]:
        """The chat request for one post (online, and each line of a Batch API file)."""
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages(text), "response_format": response_format(),
                                "temperature": 0, "max_completion_tokens": 16}
        if self.spec.logprobs:
            body.update(logprobs=True, top_logprobs=self.spec.top_logprobs)
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

    async def ask(self, client, text: str, on_abandoned: Callable[[], None] | None = None) -> Answer:
        """One post, with retries. ``on_abandoned`` is called for every attempt that timed out on our side
        and is retried: the provider may have finished (and billed) it."""
        import openai

        start, attempt = time.perf_counter(), 0
        last_error = ""
        while attempt <= self.spec.max_retries:
            attempt += 1
            self.stats["requests"] += 1
            try:
                r = await client.chat.completions.create(**self.request_body(text))
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as exc:
                last_error = f"{type(exc).__name__}: {redact(str(exc))[:120]}"
                if isinstance(exc, openai.APITimeoutError) and on_abandoned is not None:
                    on_abandoned()
                if attempt > self.spec.max_retries:
                    break
                self.stats["retries"] += 1
                wait = retry_after_seconds(exc)
                if wait is None:
                    wait = min(self.spec.max_backoff_s, self.spec.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())
                await asyncio.sleep(wait)
                continue
            except openai.APIStatusError as exc:  # 400/401/403/404...: retrying will not help
                return Answer(None, "failed", f"HTTP {exc.status_code}: {redact(str(exc))[:160]}", attempts=attempt,
                              latency_s=time.perf_counter() - start)
            return self.answer_from(r, attempt, time.perf_counter() - start)
        return Answer(None, "failed", f"gave up after {attempt} attempts ({last_error})", attempts=attempt,
                      latency_s=time.perf_counter() - start)

    def label(self, texts: Sequence[str], cache: LabelCache) -> list[Answer]:
        if self.spec.mode == "batch":
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

        deadline = time.monotonic() + self.spec.batch_timeout_s
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise BatchPending(f"batch {batch_id} is still {batch.status} after {self.spec.batch_timeout_s:.0f} s; "
                                   f"re-run the stage later to collect it (nothing is submitted twice)")
            await asyncio.sleep(self.spec.batch_poll_s)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = (await client.files.content(file_id)).text
            for line in filter(None, map(str.strip, content.splitlines())):
                record = json.loads(line)
                response = record.get("response") or {}
                if response.get("status_code") == 200 and response.get("body"):
                    completion = ChatCompletion.model_validate(response["body"])
                    cache.put(record["custom_id"], self.teacher_id, self.answer_from(completion, 1, 0.0, mode_factor("batch")))
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
        gate = asyncio.Semaphore(self.spec.concurrency)

        async def one(i: int) -> None:
            key = cache_key(self.teacher_id, texts[i])

            def abandoned() -> None:  # a timed-out attempt may still be billed: estimate it into the ledger
                guess = estimate_cost([texts[i]], self.price)
                cache.record_spend(self.teacher_id, key, "possibly_billed_timeout", guess["prompt_tokens"],
                                   guess["completion_tokens"], guess["usd"])

            async with gate:
                answer = await self.ask(client, texts[i], on_abandoned=abandoned)
            cache.put(key, self.teacher_id, answer)  # the answer and its cost, as it arrives
            answers[i] = answer

        tasks = [asyncio.create_task(one(i)) for i in todo]
        for task in tqdm(asyncio.as_completed(tasks), total=len(tasks), desc=f"label {self.spec.model}", unit="post"):
            await task
        await client.close()
        return answers  # type: ignore[return-value]
