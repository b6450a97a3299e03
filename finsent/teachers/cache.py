"""The answer cache: every teacher answer by content hash in SQLite, the moment it arrives."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
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
    requests in flight). Failed answers are not kept, so a re-run tries them again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, teacher TEXT, prompt_version TEXT,"
                        " answer TEXT, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, teacher TEXT, keys TEXT,"
                        " status TEXT, created REAL)")
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
        if answer.status == "failed":
            return
        record = json.dumps({k: v for k, v in asdict(answer).items() if k != "cached"})
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                            (key, teacher_id, PROMPT_VERSION, record, time.time()))
            self.db.commit()

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
