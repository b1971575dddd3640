"""Tombstones (who was forgotten) and the deletion audit log, in one SQLite file (`default_privacy_path`).

A tombstone outlives every copy of the data: validation drops the user's rows from every source (raw files, landed
drops, landed events) and the service answers them anonymously, so ratings still sitting in files can never reach
training or serving again. The audit log is append-only, enforced by the database (triggers refuse UPDATE and
DELETE), and records who forgot whom, when, and how much was removed where.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from recsys_core.paths import recsys_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS tombstones (
    user_id INTEGER PRIMARY KEY,
    forgotten_at REAL NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    removed TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


ENV_VAR = "RECSYS_TOMBSTONES"


def default_privacy_path() -> Path:
    """`$RECSYS_TOMBSTONES`, else `$RECSYS_HOME/privacy.sqlite`: the one file the CLI, the service and validation share."""
    return Path(os.environ.get(ENV_VAR) or recsys_home() / "privacy.sqlite")


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: float
    actor: str  # "key:<name>" for the admin endpoint, "cli:<login>" for `recsys forget-user`
    user_id: int
    removed: dict[str, int]  # place -> rows removed there


class Tombstones:
    """Opened per use (a connection per call): the CLI, the service and Dagster runs share the file safely."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_privacy_path()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a forget that was acknowledged survives a power cut
            connection.executescript(SCHEMA)
            yield connection
        finally:
            connection.close()

    def add(self, user_id: int, actor: str) -> None:
        """Tombstones `user_id` (the first tombstone of a user is kept)."""
        with self._connect() as connection:
            connection.execute("INSERT OR IGNORE INTO tombstones VALUES (?, ?, ?)", (user_id, time.time(), actor))

    def users(self) -> frozenset[int]:
        if not self.path.exists():
            return frozenset()
        with self._connect() as connection:
            return frozenset(int(row[0]) for row in connection.execute("SELECT user_id FROM tombstones"))

    def record(self, user_id: int, actor: str, removed: dict[str, int]) -> AuditRecord:
        at = time.time()
        with self._connect() as connection:
            cursor = connection.execute("INSERT INTO audit (at, actor, user_id, removed) VALUES (?, ?, ?, ?)",
                                        (at, actor, user_id, json.dumps(removed, sort_keys=True)))  # fmt: skip
            return AuditRecord(int(cursor.lastrowid), at, actor, user_id, removed)

    def audit(self, user_id: int | None = None) -> list[AuditRecord]:
        if not self.path.exists():
            return []
        where, params = ("WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        with self._connect() as connection:
            rows = connection.execute(f"SELECT seq, at, actor, user_id, removed FROM audit {where} ORDER BY seq", params)
            return [AuditRecord(seq, at, actor, uid, json.loads(removed)) for seq, at, actor, uid, removed in rows]
