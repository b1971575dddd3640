"""Group commit for async writers: batches that arrive while the store is busy go to it together, as one append.

A durable append costs one fsync (SQLite `synchronous=FULL`, Redis `appendfsync always`) whatever its size, so with many
small concurrent requests the fsync, not the events, sets the pace. Merging them keeps every guarantee: the merged
append is one atomic transaction, and each request learns exactly which of its events were new (the first occurrence of
an `event_id` in commit order is stored, every later one is a duplicate).
"""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from recsys_core.events.schema import Event
from recsys_core.events.store import AppendResult, EventStore


class GroupCommitter:
    """`await append(events)` from the event loop; at most one store append runs at a time, in a worker thread."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._pending: list[tuple[list[Event], asyncio.Future[AppendResult]]] = []
        self._flushing = False

    async def append(self, events: list[Event]) -> AppendResult:
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    result = await run_in_threadpool(self.store.append, [e for events, _ in group for e in events])
                except Exception as error:  # nothing of the group was stored: every request hears why
                    for _, future in group:
                        future.set_exception(error)
                    continue
                fresh = {e.event_id: e for e in result.stored}
                for events, future in group:
                    stored = [fresh.pop(e.event_id) for e in events if e.event_id in fresh]
                    future.set_result(AppendResult(stored, len(events) - len(stored)))
        finally:
            self._flushing = False
