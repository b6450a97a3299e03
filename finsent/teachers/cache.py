"""The answer cache and the spend ledger: every teacher answer by content hash in SQLite, and what it
cost, written in one commit the moment it arrives, so a killed run loses neither an answer nor a cent."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from finsent.core.prompts import PROMPT_VERSION
from finsent.teachers.answers import Answer

CACHE_FILE = "labels.sqlite"


def cache_path(cache_dir: str | Path) -> Path:
    """Where the answer cache of ``label.cache_dir`` lives (the label and compare stages share it)."""
    return Path(cache_dir) / CACHE_FILE


def cache_key(teacher_id: str, text: str) -> str:
    return hashlib.sha256(f"{teacher_id}\x00{PROMPT_VERSION}\x00{text}".encode("utf-8")).hexdigest()


class LabelCache:
    """Answers by content hash in SQLite (WAL, one commit per answer: a kill -9 loses at most the
    requests in flight). Failed answers are not kept, so a re-run tries them again.

    The ``spend`` table is the cost ledger: one row per paid answer (in the same commit as the answer)
    and one per attempt that may have been billed without an answer (a client timeout: the provider
    may have finished it), tagged with this run's id. ``ledger.csv`` is a per-run view of it."""

    def __init__(self, path: str | Path, run_id: str | None = None):
        self.path = Path(path)
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, teacher TEXT, prompt_version TEXT,"
                        " answer TEXT, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, teacher TEXT, keys TEXT,"
                        " status TEXT, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS spend (run_id TEXT, time REAL, teacher TEXT, key TEXT,"
                        " kind TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL)")
        self.db.commit()

    @classmethod
    def in_dir(cls, cache_dir: str | Path) -> "LabelCache":
        return cls(cache_path(cache_dir))

    def get(self, key: str) -> Answer | None:
        with self._lock:
            row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Answer(**{**json.loads(row[0]), "cached": True})

    def put(self, key: str, teacher_id: str, answer: Answer) -> None:
        """Keep an answer (not a failed one) and, in the same commit, what it cost."""
        if answer.status == "failed":
            return
        record = json.dumps({k: v for k, v in asdict(answer).items() if k != "cached"})
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                            (key, teacher_id, PROMPT_VERSION, record, time.time()))
            if answer.cost_usd or answer.prompt_tokens:
                self._spend(teacher_id, key, "answer", answer.prompt_tokens, answer.completion_tokens,
                            answer.cost_usd)
            self.db.commit()

    def record_spend(self, teacher_id: str, key: str, kind: str, prompt_tokens: int, completion_tokens: int,
                     cost_usd: float) -> None:
        """Spend with no answer kept (e.g. ``possibly_billed_timeout``), committed at once."""
        with self._lock:
            self._spend(teacher_id, key, kind, prompt_tokens, completion_tokens, cost_usd)
            self.db.commit()

    def _spend(self, teacher_id, key, kind, prompt_tokens, completion_tokens, cost_usd) -> None:
        self.db.execute("INSERT INTO spend VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (self.run_id, time.time(), teacher_id, key, kind, int(prompt_tokens),
                         int(completion_tokens), float(cost_usd)))

    def spend_by_run(self) -> list[dict]:
        """The ledger: per run and teacher, answers paid, attempts possibly billed, tokens and USD."""
        with self._lock:
            rows = self.db.execute(
                "SELECT run_id, MIN(time), teacher, SUM(kind = 'answer'), SUM(kind != 'answer'), SUM(prompt_tokens),"
                " SUM(completion_tokens), SUM(CASE WHEN kind = 'answer' THEN cost_usd ELSE 0 END),"
                " SUM(CASE WHEN kind != 'answer' THEN cost_usd ELSE 0 END)"
                " FROM spend GROUP BY run_id, teacher ORDER BY MIN(time)").fetchall()
        keys = ("run_id", "started", "teacher_id", "paid_answers", "possibly_billed_attempts", "prompt_tokens",
                "completion_tokens", "cost_usd", "possibly_billed_usd")
        out = []
        for row in rows:
            entry = dict(zip(keys, row))
            entry["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry["started"]))
            entry["cost_usd"] = round(entry["cost_usd"], 8)
            entry["possibly_billed_usd"] = round(entry["possibly_billed_usd"], 8)
            out.append(entry)
        return out

    def answered_cost(self) -> float:
        """USD of every answer kept (what the provider billed for them)."""
        with self._lock:
            rows = self.db.execute("SELECT answer FROM answers").fetchall()
        return sum(json.loads(r[0]).get("cost_usd", 0.0) for r in rows)

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
