"""`POST /events` and the live histories that `GET /recommendations/{user_id}` reads (read-your-writes, no retraining).

A batch is stored all or nothing after `parse_batch` accepted every event; the response counts stored and duplicate
events (a retried batch is all duplicates). The store outlives model swaps: it is keyed by user and item ids, not by
a model's indices, so a new model reads the same live histories.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from recsys_core.events import BatchError, EventMapping, EventRules, EventStore, parse_batch
from recsys_core.events.group_commit import GroupCommitter
from recsys_core.serving.auth import ApiKeys
from recsys_core.serving.errors import KEYED_RESPONSES, ErrorBody
from recsys_core.serving.reload import ModelHolder
from recsys_core.serving.scorer import OnnxScorer

log = logging.getLogger(__name__)


class EventsResponse(BaseModel):
    received: int
    stored: int
    duplicates: int


@dataclass
class LiveEvents:
    """The event store as serving uses it: ingest with `rules`, history as ratings through `mapping`."""

    store: EventStore
    rules: EventRules = field(default_factory=EventRules)
    mapping: EventMapping = field(default_factory=EventMapping)
    max_body_bytes: int = 1 << 20

    def history(self, scorer: OnnxScorer, user_id: int) -> tuple[list[int], list[float]]:
        """The user's live events since the model's training cut-off that the model knows, oldest first, capped."""
        since = float(scorer.manifest.get("trained_until", 0.0))
        events = self.store.history(user_id, since=since, limit=scorer.history_len)
        items, ratings = self.mapping.history(events)
        known = scorer.items.contains(items).tolist() if items else []
        return [i for i, k in zip(items, known) if k], [r for r, k in zip(ratings, known) if k]


def events_router(holder: ModelHolder, live: LiveEvents, keys: ApiKeys, registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(tags=["events"])
    committer = GroupCommitter(live.store)
    accepted = Counter("recsys_events_accepted", "Events stored, by type", ["type"], registry=registry)
    duplicated = Counter("recsys_events_duplicated", "Events already stored (retries), by type", ["type"], registry=registry)
    rejected = Counter("recsys_event_batches_rejected", "Refused event batches (nothing stored), by reason", ["reason"],
                       registry=registry)  # fmt: skip
    write_seconds = Histogram("recsys_event_store_write_seconds", "Event store append latency per batch", registry=registry,
                              buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))  # fmt: skip

    @router.post("/events", response_model=EventsResponse,
                 responses={**KEYED_RESPONSES, 503: {"model": ErrorBody, "description": "Event store unavailable: retry"}})
    async def post_events(request: Request, key=Depends(keys.require("write"))) -> EventsResponse:  # noqa: ANN001, B008
        """Stores a batch of events ({"events": [...]}) all or nothing; retried `event_id`s count as duplicates."""
        body = await request.body()  # already bounded by RequestBounds (live.max_body_bytes for this path)
        scorer = holder.current.scorer
        try:
            events = parse_batch(body, live.rules, lambda ids: scorer.items.contains(ids).tolist())
        except BatchError as error:
            rejected.labels(reason=error.reason).inc()
            raise HTTPException(error.status, str(error)) from None
        started = time.perf_counter()
        try:
            result = await committer.append(events)
        except Exception as error:  # the store is down or full: the client retries the same batch, nothing doubles
            log.exception("event store %s failed", live.store.describe())
            rejected.labels(reason="store_unavailable").inc()
            raise HTTPException(503, f"event store unavailable: {type(error).__name__}; retry the batch") from None
        write_seconds.observe(time.perf_counter() - started)  # includes waiting for the group's commit
        fresh = {e.event_id for e in result.stored}
        for event in events:
            (accepted if event.event_id in fresh else duplicated).labels(type=event.type).inc()
            fresh.discard(event.event_id)  # the same id twice in one batch: the second is a duplicate
        return EventsResponse(received=len(events), stored=len(result.stored), duplicates=result.duplicates)

    return router
