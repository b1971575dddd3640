"""The embedded event store: one SQLite file in WAL mode, so a laptop and `make demo` need no server.

Durability: WAL with `synchronous=FULL` (the default here) fsyncs the log at every commit, so an acknowledged batch
survives a killed process and a power cut; `NORMAL` survives a killed process (SIGKILL) but may lose the last commits
on a power cut or OS crash, in exchange for fewer fsyncs. Writers are serialised by SQLite's write lock
(`BEGIN IMMEDIATE`), which is what makes `seq` (the rowid) follow commit order: a cursor never skips an event.

Schema changes migrate at open, in place and without touching rows: a file written before events had a `payload`
gets the column (NULL for its old rows), so upgrading the service never needs a rebuild of the log.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path

from recsys_core.events.schema import Event
from recsys_core.events.store import DEFAULT_HISTORY_TYPES, AppendResult, EventStore

log = logging.getLogger(__name__)

COLUMNS = "seq, event_id, user_id, item_id, type, value, timestamp, request_id, received_at, payload"
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    timestamp REAL NOT NULL,
    request_id TEXT,
    received_at REAL NOT NULL,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE INDEX IF NOT EXISTS events_by_received ON events (received_at);
CREATE INDEX IF NOT EXISTS events_by_user_type ON events (user_id, type, seq);
"""


def _event(row: tuple) -> Event:
    seq, event_id, user_id, item_id, type_, value, timestamp, request_id, received_at, payload = row
    return Event(event_id, user_id, item_id, type_, timestamp, value, request_id, received_at, seq, payload)


def _columns(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute("PRAGMA table_info(events)")}


def migrate(connection: sqlite3.Connection) -> list[str]:
    """Brings an events table written by an older version up to `SCHEMA` (adding a column keeps every row and costs
    no rewrite). Checked again under the write lock, so two processes opening one old file do not both alter it; an
    up-to-date file takes no lock. -> what changed."""
    if "payload" in _columns(connection):
        return []
    connection.execute("BEGIN IMMEDIATE")
    try:
        changed = []
        if "payload" not in _columns(connection):
            connection.execute("ALTER TABLE events ADD COLUMN payload TEXT")
            changed.append("added events.payload")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return changed


class SqliteEventStore(EventStore):
    """One connection per thread (the HTTP service writes from a thread pool)."""

    def __init__(
        self, path: str | Path, history_cap: int = 200, history_types: tuple[str, ...] = DEFAULT_HISTORY_TYPES,
        synchronous: str = "FULL",
    ) -> None:  # fmt: skip
        super().__init__(history_cap, history_types)
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"event store {path}: synchronous={synchronous!r}; expected FULL, NORMAL or EXTRA")
        self.path, self.synchronous = Path(path), synchronous.upper()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connection().executescript(SCHEMA)
        for change in migrate(self._connection()):
            log.warning("event store %s: migrated (%s)", self.path, change)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def append(self, events: list[Event]) -> AppendResult:
        connection = self._connection()
        stored: list[Event] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            last = connection.execute("SELECT received_at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            received_at = max(time.time(), last[0] if last else 0.0)  # monotonic even if the wall clock steps back
            for e in events:
                cursor = connection.execute(
                    "INSERT OR IGNORE INTO events (event_id, user_id, item_id, type, value, timestamp, request_id, received_at,"
                    " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.event_id, e.user_id, e.item_id, e.type, e.value, e.timestamp, e.request_id, received_at, e.payload),
                )
                if cursor.rowcount:
                    stored.append(dataclasses.replace(e, received_at=received_at, seq=int(cursor.lastrowid)))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return AppendResult(stored, len(events) - len(stored))

    def read(self, after: int = 0, limit: int = 10_000) -> list[Event]:
        rows = self._connection().execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [_event(row) for row in rows]

    def read_received(self, start: float, end: float) -> list[Event]:
        rows = self._connection().execute(
            f"SELECT {COLUMNS} FROM events WHERE received_at >= ? AND received_at < ? ORDER BY seq", (start, end)
        )
        return [_event(row) for row in rows]

    def history(self, user_id: int, since: float = 0.0, limit: int | None = None) -> list[Event]:
        marks = ",".join("?" * len(self.history_types))
        rows = self._connection().execute(
            # By type: a user's other events (an experiment logs ~10 exposures per response) are never scanned.
            f"SELECT {COLUMNS} FROM events INDEXED BY events_by_user_type WHERE user_id = ? AND type IN ({marks}) "
            "ORDER BY seq DESC LIMIT ?",
            (user_id, *self.history_types, self.history_cap),
        ).fetchall()
        return self._recent([_event(row) for row in reversed(rows)], since, limit)

    def forget_user(self, user_id: int) -> int:
        return int(self._connection().execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount)

    def count(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM events").fetchone()[0])

    def ping(self) -> bool:
        return self._connection().execute("SELECT 1").fetchone() == (1,)

    def describe(self) -> str:
        return f"sqlite:///{self.path} (WAL, synchronous={self.synchronous})"

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
