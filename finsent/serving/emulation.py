"""Test tooling served beside the model: injected faults, and an in-memory OpenAI Batch API.

Neither is needed to serve a model; both let clients (this project's label stage, or a user's) be
tested against what a real provider does: 429s with Retry-After, 500s, timeouts, off-schema answers,
and batches that take time to complete. ``create_app`` mounts them (finsent.serving.app).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request, Response

from finsent.serving.openai_shape import error_response
from finsent.serving.requests import BatchCreate


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


class BatchAPI:
    """The Batch API in memory: ``POST /v1/files``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
    ``GET /v1/files/{id}/content``. Each line runs through ``answer(body) -> (status, payload)``, the
    same path as a chat completion; a batch waits ``delay_s`` first (a real one takes up to 24 h)."""

    def __init__(self, answer: Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]], delay_s: float = 0.0):
        self.answer, self.delay_s = answer, delay_s
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.router = APIRouter()
        self.router.add_api_route("/v1/files", self.upload, methods=["POST"])
        self.router.add_api_route("/v1/files/{file_id}/content", self.file_content, methods=["GET"])
        self.router.add_api_route("/v1/batches", self.create_batch, methods=["POST"])
        self.router.add_api_route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"])

    def store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        meta = {"id": f"file-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[meta["id"]] = {**meta, "content": content}
        return meta

    async def upload(self, request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error_response(400, "upload a file as multipart/form-data with fields `file` and `purpose`",
                                  "invalid_request_error", param="file")
        form = await request.form()
        upload_file = form.get("file")
        if upload_file is None or isinstance(upload_file, str):
            return error_response(400, "no file in the upload: send the JSONL as the multipart field `file`",
                                  "invalid_request_error", param="file")
        return self.store_file(await upload_file.read(), upload_file.filename or "upload.jsonl",
                               str(form.get("purpose", "")))

    async def file_content(self, file_id: str):
        if file_id not in self.files:
            return error_response(404, f"No such file: {file_id}", "invalid_request_error")
        return Response(self.files[file_id]["content"], media_type="application/jsonl")

    def parse_input(self, content: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(request lines, errors): each error names its line, as OpenAI reports a bad input file."""
        lines, errors = [], []
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            return [], [{"code": "invalid_encoding", "line": None,
                         "message": f"the input file is not UTF-8 (byte {exc.start})", "param": None}]
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError as exc:
                errors.append({"code": "invalid_json_line", "line": number, "param": None,
                               "message": f"line {number} is not valid JSON ({exc.msg})"})
                continue
            if not isinstance(line, dict) or not isinstance(line.get("body"), dict) or "custom_id" not in line:
                errors.append({"code": "invalid_request", "line": number, "param": None,
                               "message": f"line {number} must be an object with custom_id and body"})
                continue
            lines.append(line)
        if not lines and not errors:
            errors.append({"code": "empty_file", "line": None, "param": None, "message": "the input file is empty"})
        return lines, errors

    async def run_batch(self, batch: dict[str, Any]) -> None:
        try:
            await self._run_batch(batch)
        except Exception as exc:  # never leave a batch in_progress forever
            self._fail(batch, [{"code": "server_error", "line": None, "param": None,
                                "message": f"the batch failed ({type(exc).__name__})"}])

    def _fail(self, batch: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        content = "\n".join(json.dumps({"error": e}) for e in errors).encode() + b"\n"
        batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors},
                     error_file_id=self.store_file(content, "errors.jsonl", "batch_output")["id"])

    async def _run_batch(self, batch: dict[str, Any]) -> None:
        await asyncio.sleep(self.delay_s)
        lines, errors = self.parse_input(self.files[batch["input_file_id"]]["content"])
        if errors:  # OpenAI validates the whole file first and fails the batch on a bad line
            self._fail(batch, errors)
            return
        batch["status"] = "in_progress"
        batch["request_counts"]["total"] = len(lines)

        async def one(line: dict[str, Any]) -> str:
            status, payload = await self.answer(line.get("body") or {})
            counts = batch["request_counts"]
            counts["completed" if status == 200 else "failed"] += 1
            return json.dumps({"id": f"batch_req_{uuid.uuid4().hex[:16]}", "custom_id": line.get("custom_id"),
                               "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": payload},
                               "error": None})

        out = await asyncio.gather(*(one(line) for line in lines))
        batch["output_file_id"] = self.store_file("\n".join(out).encode() + b"\n", "output.jsonl", "batch_output")["id"]
        batch.update(status="completed", completed_at=int(time.time()))

    async def create_batch(self, body: BatchCreate):
        if body.input_file_id not in self.files:
            return error_response(400, f"input_file_id {body.input_file_id!r} was not uploaded",
                                  "invalid_request_error", param="input_file_id")
        batch = {"id": f"batch_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": body.endpoint,
                 "input_file_id": body.input_file_id, "completion_window": body.completion_window,
                 "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                 "error_file_id": None, "errors": None, "metadata": body.metadata,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        self.batches[batch["id"]] = batch
        batch["_task"] = asyncio.get_running_loop().create_task(self.run_batch(batch))
        return self.public(batch)

    async def get_batch(self, batch_id: str):
        if batch_id not in self.batches:
            return error_response(404, f"No such batch: {batch_id}", "invalid_request_error")
        return self.public(self.batches[batch_id])

    @staticmethod
    def public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}
