"""The OpenAI API's shapes: error bodies, the post inside a chat request, a chat.completion for one post."""
from __future__ import annotations

import hashlib
import math
import time
import uuid
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from finsent.core.labelset import LABELS
from finsent.core.prompts import PROMPT_VERSION, extract_text
from finsent.serving.requests import ChatMessage, ChatRequest, ResponseFormat


def text_key(text: str) -> str:
    """Short content hash of a post (what /v1/stats counts requests by)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None,
                   param: str | None = None):
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(message, param) for a pydantic / FastAPI validation error list: the first problem, with its field."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return (f"{param}: {message}{more}" if param else f"{message}{more}"), param


def last_user_text(messages: list[ChatMessage]) -> str:
    """The post: the last user message's text (string content or text parts)."""
    for message in reversed(messages):
        if message.role == "user" and message.text() is not None:
            return extract_text(message.text())
    raise ValueError("messages hold no user message with text")


def label_property(response_format: ResponseFormat | None) -> str:
    """The JSON property to answer in: the schema's property whose enum is the label set, else 'label'."""
    schema = (response_format.json_schema.schema_ if response_format and response_format.json_schema else None) or {}
    properties = schema.get("properties")
    for name, prop in (properties.items() if isinstance(properties, dict) else []):
        if isinstance(prop, dict) and isinstance(prop.get("enum"), list) and set(map(str, prop["enum"])) == set(LABELS):
            return str(name)
    return "label"


def chat_completion(model_id: str, probs: np.ndarray, request: ChatRequest, prompt_tokens: int,
                    off_schema: bool = False) -> dict[str, Any]:
    """One chat.completion object for one post's probabilities."""
    label = "bullish" if off_schema else LABELS[int(np.argmax(probs))]
    logp = {lab: math.log(max(float(p), 1e-12)) for lab, p in zip(LABELS, probs)}
    fmt = request.response_format.type if request.response_format else None
    if fmt in ("json_schema", "json_object"):
        key = label_property(request.response_format)
        pieces = [(f'{{"{key}":"', 0.0), (label, logp.get(label, -30.0)), ('"}', 0.0)]
    else:
        pieces = [(label, logp.get(label, -30.0))]
    logprobs = None
    if request.logprobs:
        k = request.top_logprobs or 0
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
