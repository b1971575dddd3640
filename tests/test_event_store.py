"""The event-store contract, run against both backends: a real SQLite file and a real redis-server on 127.0.0.1."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys_core.events import Event, EventStore, open_store
from recsys_core.events.group_commit import GroupCommitter
from recsys_core.events.redis_process import RedisServer

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
