"""The event-store contract, run against both backends: a real SQLite file and a real redis-server on 127.0.0.1."""

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_core.events import Event, EventStore, open_store
from recsys_core.events.group_commit import GroupCommitter
from recsys_core.events.redis_process import RedisServer
from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.experiments.exposures import Exposure
from recsys_core.experiments.records import EventStoreRecords

pytestmark = pytest.mark.slow  # real redis-server / uvicorn processes
CAP = 4


def event(n: int, user: int = 1, type_: str = "click", item: int | None = None) -> Event:
    return Event(f"e{n}", user, item if item is not None else 100 + n, type_, 1_700_000_000.0 + n, 4.0 if type_ == "rating" else None)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, RedisServer | None]]:
    """(store url, the redis-server to kill or None)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}", None
        return
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server.url, server
    finally:
        server.stop()


def store_for(url: str) -> EventStore:
    return open_store(url, history_cap=CAP)


def test_append_is_idempotent_and_ordered(backend) -> None:
    store = store_for(backend[0])
    first = store.append([event(1), event(2, type_="impression"), event(3, type_="rating")])
    assert [e.event_id for e in first.stored] == ["e1", "e2", "e3"] and first.duplicates == 0
    assert [e.seq for e in first.stored] == sorted({e.seq for e in first.stored})
    retry = store.append([event(1), event(2, type_="impression"), event(4), event(4)])  # a retried batch + a doubled id
    assert [e.event_id for e in retry.stored] == ["e4"] and retry.duplicates == 3
    stored = store.read()
    assert [e.event_id for e in stored] == ["e1", "e2", "e3", "e4"] and store.count() == 4
    assert stored[2].value == 4.0 and stored[2].type == "rating" and stored[0].value is None
    assert all(a.received_at <= b.received_at for a, b in zip(stored, stored[1:]))
    window = store.read_received(stored[0].received_at, stored[-1].received_at + 1)
    assert [e.event_id for e in window] == ["e1", "e2", "e3", "e4"]
    assert store.read_received(stored[-1].received_at + 1, stored[-1].received_at + 2) == []
    store.close()


def test_history_is_per_user_oldest_first_capped_and_typed(backend) -> None:
    store = store_for(backend[0])
    store.append([event(n, user=1) for n in range(1, 4)] + [event(4, user=2), event(5, user=1, type_="impression")])
    store.append([event(n, user=1, type_="purchase") for n in range(6, 9)])
    history = store.history(1)
    assert [e.event_id for e in history] == ["e3", "e6", "e7", "e8"]  # impressions are no history; the newest CAP kept
    assert [e.event_id for e in store.history(1, limit=2)] == ["e7", "e8"]
    assert [e.event_id for e in store.history(1, since=1_700_000_000.0 + 7)] == ["e7", "e8"]
    assert [e.event_id for e in store.history(2)] == ["e4"] and store.history(3) == []
    store.close()


def test_forget_user_removes_log_history_and_idempotency_ids_of_that_user_only(backend) -> None:
    store = store_for(backend[0])
    store.append([event(1, user=7), event(2, user=8), event(3, user=7, type_="impression"), event(4, user=7, type_="rating")])
    assert store.forget_user(7) == 3 and store.forget_user(7) == 0
    assert [e.event_id for e in store.read()] == ["e2"] and store.count() == 1
    window = store.read_received(0.0, 4e9)
    assert [e.event_id for e in window] == ["e2"]
    assert store.history(7) == [] and [e.event_id for e in store.history(8)] == ["e2"]
    again = store.append([event(1, user=7), event(2, user=8)])  # the forgotten id is new again; e2 still a duplicate
    assert [e.event_id for e in again.stored] == ["e1"] and again.duplicates == 1
    assert [e.event_id for e in store.history(7)] == ["e1"]
    store.close()


def test_cursor_reads_have_no_gap_and_no_duplicate_across_a_restart(backend) -> None:
    url, server = backend
    store = store_for(url)
    acknowledged = []
    for batch in range(5):
        acknowledged += [e.event_id for e in store.append([event(batch * 10 + i, user=i) for i in range(7)]).stored]
    consumed, cursor = [], 0
    while page := store.read(cursor, limit=6):
        consumed += [e.event_id for e in page]
        cursor = page[-1].seq
        if len(consumed) >= 20:
            break
    store.close()
    if server is not None:
        server.kill()  # SIGKILL: only the AOF (fsync always) remains
        server.start()
    store = store_for(url)
    acknowledged += [e.event_id for e in store.append([event(99), event(1)]).stored]  # e1 was stored before the restart
    while page := store.read(cursor, limit=6):
        consumed += [e.event_id for e in page]
        cursor = page[-1].seq
    assert consumed == acknowledged and len(set(consumed)) == 36
    store.close()


def test_unknown_store_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected sqlite:///PATH or redis://"):
        open_store("postgres://nowhere")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['fsync'\]"):
        open_store("sqlite:///tmp/x.sqlite?fsync=off")


def test_group_commit_merges_concurrent_batches_and_attributes_each_event_once(backend) -> None:
    store = store_for(backend[0])
    committer = GroupCommitter(store)

    async def concurrently() -> list:
        return await asyncio.gather(*(committer.append(batch) for batch in ([event(1), event(2)], [event(2), event(3)], [event(3), event(3)])))

    results = asyncio.run(concurrently())
    assert [([e.event_id for e in r.stored], r.duplicates) for r in results] == [(["e1", "e2"], 0), (["e3"], 1), ([], 2)]
    assert [e.event_id for e in store.read()] == ["e1", "e2", "e3"]
    store.close()


def with_payload(e: Event, payload: str | None) -> Event:
    return dataclasses.replace(e, payload=payload)


def test_payload_round_trips_through_the_log_the_windows_and_the_history(backend) -> None:
    store = store_for(backend[0])
    note = json.dumps({"arm": "b", "items": [3, 1], "note": "two\nlines, é"}, separators=(",", ":"), ensure_ascii=False)
    spaced = '{"a":\n 1}'  # valid JSON with a raw newline: the Redis history row must still split at the right place
    first = store.append([with_payload(event(1), note), event(2), with_payload(event(3, type_="impression"), spaced)])
    assert [e.payload for e in first.stored] == [note, None, spaced]
    for read in (store.read(), store.read_received(0.0, 4e9)):
        assert [e.payload for e in read] == [note, None, spaced]
    assert [(e.event_id, e.payload) for e in store.history(1)] == [("e1", note), ("e2", None)]
    retry = store.append([with_payload(event(1), '{"other":1}')])  # idempotency is the event_id's: the first write wins
    assert retry.duplicates == 1 and store.read()[0].payload == note
    store.close()


def legacy_exposure(exposure: Exposure) -> Event:
    """An exposure as versions before the payload column logged it: every field packed into the event_id."""
    packed = [exposure.experiment, exposure.arm, exposure.model_version, exposure.request_id, exposure.timestamp,
              round(exposure.latency_ms, 3), exposure.fallback, list(exposure.item_ids)]  # fmt: skip
    return Event("exposure|" + json.dumps(packed, separators=(",", ":")), exposure.user_id, exposure.item_ids[0], "exposure",
                 exposure.timestamp, float(len(exposure.item_ids)), exposure.request_id)  # fmt: skip


def test_exposures_are_read_back_from_their_payload_and_from_the_legacy_packed_event_id(backend) -> None:
    store = store_for(backend[0])
    now = time.time()
    old = Exposure("exp", "control", "3", "req-old", 11, [5, 6, 7], now, 1.25, False)
    new = Exposure("exp", "treatment", "4", "req-new", 12, [8, 9], now, 2.5, True)
    other = Exposure("other", "control", "3", "req-other", 13, [5], now, 1.0, False)
    stored = store.append([legacy_exposure(old), new.event(), other.event(), new.event()])  # the last: a retried append
    assert stored.duplicates == 1 and [e.event_id.startswith("exposure-") for e in stored.stored] == [False, True, True]
    assert all(len(e.event_id) <= 128 and e.payload is not None for e in stored.stored[1:])
    store.append([Event("c1", 12, 9, "click", now, request_id="req-new")])
    definition = ExperimentDefinition("exp", {"control": "alias:champion", "treatment": "alias:challenger"},
                                      {"control": 0.5, "treatment": 0.5}, start_time=now - 60)  # fmt: skip
    exposures, clicks = EventStoreRecords(store).read(definition)
    rows = exposures[["request_id", "user_id", "arm", "item_id", "rank", "model_version", "latency_ms", "fallback"]]
    assert rows.values.tolist() == [
        ["req-old", 11, "control", 5, 1, "3", 1.25, False], ["req-old", 11, "control", 6, 2, "3", 1.25, False],
        ["req-old", 11, "control", 7, 3, "3", 1.25, False],
        ["req-new", 12, "treatment", 8, 1, "4", 2.5, True], ["req-new", 12, "treatment", 9, 2, "4", 2.5, True],
    ]  # fmt: skip
    assert clicks[["user_id", "item_id", "request_id"]].values.tolist() == [[12, 9, "req-new"]]
    store.close()


OLD_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL, type TEXT NOT NULL, value REAL, timestamp REAL NOT NULL, request_id TEXT, received_at REAL NOT NULL);
CREATE INDEX events_by_user ON events (user_id, seq);
"""


def test_an_sqlite_file_from_before_payloads_is_migrated_at_open_and_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    exposure = Exposure("exp", "control", "3", "req-old", 11, [5, 6], time.time(), 1.0, False)
    packed = legacy_exposure(exposure)
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
        connection.executemany("INSERT INTO events (event_id, user_id, item_id, type, value, timestamp, request_id, received_at)"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               [(packed.event_id, 11, 5, "exposure", 2.0, packed.timestamp, "req-old", packed.timestamp),
                                ("c1", 11, 5, "click", None, packed.timestamp, "req-old", packed.timestamp)])  # fmt: skip
    for _ in range(2):  # the second open finds the column and changes nothing
        store = store_for(f"sqlite:///{path}")
        assert [(e.event_id, e.payload) for e in store.read()][:2] == [(packed.event_id, None), ("c1", None)]
        store.close()
    store = store_for(f"sqlite:///{path}")
    assert store.append([with_payload(event(3), '{"k":1}')]).stored[0].seq == 3
    assert store.count() == 3 and store.read(after=2)[0].payload == '{"k":1}'
    definition = ExperimentDefinition("exp", {"control": "alias:champion", "treatment": "alias:challenger"},
                                      {"control": 0.5, "treatment": 0.5}, start_time=0.0)  # fmt: skip
    exposures, _ = EventStoreRecords(store).read(definition)
    assert exposures[["request_id", "item_id", "rank"]].values.tolist() == [["req-old", 5, 1], ["req-old", 6, 2]]
    store.close()
    with sqlite3.connect(path) as connection:
        assert "payload" in {row[1] for row in connection.execute("PRAGMA table_info(events)")}
