"""One event-store interface, two real backends: SQLite in WAL mode (embedded default) and Redis (production).

Every backend promises the same contract (tests/test_event_store.py runs it against both):
- `append` is atomic per batch and idempotent per `event_id`: a retried event is counted as a duplicate, never stored twice;
- every stored event gets a `seq`, strictly increasing in commit order, and a monotonic server `received_at`;
- `read(after, limit)` returns events with `seq > after` in order, so a consumer that keeps the last `seq` as its cursor
  sees every event exactly once, across restarts of itself and of the store;
- `history(user_id, ...)` returns the user's recent interactions (types in `history_types`), oldest first, capped;
- `forget_user(user_id)` removes every event of the user (the log, the history and the idempotency ids), so nothing
  of theirs is read, served or landed again; a later event with a forgotten `event_id` is stored as new.

Chosen like the Dagster and MLflow stores: `$RECSYS_EVENT_STORE` (`sqlite:///path` or `redis://host:port/db`), else
SQLite at `$RECSYS_HOME/events.sqlite`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

from recsys_core.events.schema import Event
from recsys_core.paths import recsys_home

ENV_VAR = "RECSYS_EVENT_STORE"
DEFAULT_HISTORY_TYPES = ("click", "rating", "purchase")


@dataclass(frozen=True)
class AppendResult:
    stored: list[Event]  # with seq and received_at
    duplicates: int


class EventStore(ABC):
    """See the module docstring for the contract."""

    def __init__(self, history_cap: int = 200, history_types: tuple[str, ...] = DEFAULT_HISTORY_TYPES) -> None:
        self.history_cap, self.history_types = history_cap, tuple(history_types)

    @abstractmethod
    def append(self, events: list[Event]) -> AppendResult: ...

    @abstractmethod
    def read(self, after: int = 0, limit: int = 10_000) -> list[Event]:
        """Events with seq > after, in seq order."""

    @abstractmethod
    def history(self, user_id: int, since: float = 0.0, limit: int | None = None) -> list[Event]:
        """Of the user's last `history_cap` history events (arrival order), those with timestamp >= since, the newest
        `limit`, oldest first."""

    def _recent(self, capped: list[Event], since: float, limit: int | None) -> list[Event]:
        """From the capped history (oldest first), those at or after `since`, the newest `limit`."""
        recent = [e for e in capped if e.timestamp >= since]
        return recent[-min(limit or self.history_cap, self.history_cap) :]

    @abstractmethod
    def forget_user(self, user_id: int) -> int:
        """Removes every stored event of `user_id`; returns how many were removed."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def ping(self) -> bool:
        """Whether the store answers now (the service's readiness)."""

    def close(self) -> None:
        """Releases connections; the data stays."""

    @abstractmethod
    def read_received(self, start: float, end: float) -> list[Event]:
        """Every event acknowledged in [start, end) of server time (one time-window partition), in seq order."""


def default_store_url() -> str:
    return os.environ.get(ENV_VAR) or f"sqlite:///{recsys_home() / 'events.sqlite'}"


def open_store(url: str = "", history_cap: int = 200, history_types: tuple[str, ...] = DEFAULT_HISTORY_TYPES) -> EventStore:
    """`sqlite:///abs/path.sqlite[?synchronous=NORMAL]` or `redis://host:port/db`; empty = `default_store_url()`."""
    url = url or default_store_url()
    if url.startswith("sqlite:///"):
        from recsys_core.events.sqlite_store import SqliteEventStore

        path, _, query = url.removeprefix("sqlite:///").partition("?")
        options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        synchronous = options.pop("synchronous", "FULL")
        if options:
            raise ValueError(f"event store {url!r}: unknown option(s) {sorted(options)}; only synchronous=FULL|NORMAL")
        return SqliteEventStore(path, history_cap, history_types, synchronous)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from recsys_core.events.redis_store import RedisEventStore

        return RedisEventStore(url, history_cap, history_types)
    raise ValueError(f"event store {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")
