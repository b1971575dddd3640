"""What an event is, and the all-or-nothing check of a batch before anything is stored.

A batch is judged as a whole: one bad event rejects the batch with every problem named by index and field, so a
client can fix and resend it, and the store never holds half a batch. Idempotency is the client's `event_id`.

An event may carry a `payload`: a JSON object of at most `EventRules.max_payload_bytes` (UTF-8, compact), for what
has no column of its own (an exposure's arm and shown items, a client's context). It is stored as given, as compact
JSON text, and read back unchanged; it never decides validity, ordering or idempotency.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

MAX_ID = 2**62


@dataclass(frozen=True)
class Event:
    """One acknowledged behaviour. `seq` (the store's order) and `received_at` (server time) are set by the store."""

    event_id: str
    user_id: int
    item_id: int
    type: str
    timestamp: float
    value: float | None = None
    request_id: str | None = None
    received_at: float = 0.0
    seq: int = 0
    payload: str | None = None  # compact JSON text of an object; see `payload_text`


@dataclass(frozen=True)
class EventRules:
    """Configuration of what a valid event is. `rated_types` need a `value` within [rating_min, rating_max]."""

    types: tuple[str, ...] = ("impression", "click", "view", "rating", "purchase")
    rated_types: tuple[str, ...] = ("rating",)
    rating_min: float = 0.5
    rating_max: float = 5.0
    max_batch: int = 1000
    max_clock_skew_s: float = 300.0  # timestamps further in the future are refused
    min_timestamp: float = 631_152_000.0  # 1990-01-01, as for every other rating source
    max_payload_bytes: int = 4096  # an exposure's payload of 100 items: 0.6 KB (4-digit ids) to 2.1 KB (19-digit)


class EventIn(BaseModel):
    """The wire format of one event; strict, so "7" or 7.5 is not an id and NaN is not a value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: str = Field(min_length=1, max_length=128, description="client idempotency key: a retry never counts twice")
    user_id: int = Field(ge=0, le=MAX_ID)
    item_id: int = Field(ge=0, le=MAX_ID)
    type: str = Field(min_length=1, max_length=32)
    value: float | None = Field(default=None, allow_inf_nan=False, description="the rating, for `rating` events")
    timestamp: float | None = Field(default=None, allow_inf_nan=False, description="unix seconds; default: server time")
    request_id: str | None = Field(default=None, max_length=128, description="the recommendation response it answers")
    payload: dict[str, JsonValue] | None = Field(default=None, description="free-form context, a JSON object of at most 4 KB")


class EventBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[EventIn]


@dataclass
class BatchError(Exception):
    """A refused batch: HTTP-like status and one message per problem (`events[3].item_id: ...`)."""

    status: int
    reason: str  # a metric label: schema, too_many, unknown_type, unknown_item, value, timestamp, payload
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(self.problems[:20]) + (f" (+{len(self.problems) - 20} more)" if len(self.problems) > 20 else "")


def _location(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def payload_text(payload: dict[str, JsonValue], max_bytes: int) -> str:
    """The compact JSON text a payload is stored as; ValueError says why it cannot be (not finite, too large)."""
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("numbers must be finite (no NaN or Infinity)") from None
    size = len(text.encode())
    if size > max_bytes:
        raise ValueError(f"{size} bytes as compact JSON; the limit is {max_bytes}")
    return text


def parse_batch(
    body: bytes,
    rules: EventRules,
    known_items: Callable[[list[int]], list[bool]],
    now: float | None = None,
) -> list[Event]:
    """The events of a JSON body, stamped with server time where they carry none; BatchError names every problem."""
    try:
        batch = EventBatchIn.model_validate_json(body)
    except ValidationError as error:
        problems = [f"{_location(e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)]
        raise BatchError(422, "schema", problems) from None
    if len(batch.events) > rules.max_batch:
        raise BatchError(413, "too_many", [f"events: {len(batch.events)} events; the limit is {rules.max_batch} per batch"])
    now = time.time() if now is None else now
    problems: dict[str, list[str]] = {}

    def problem(reason: str, text: str) -> None:
        problems.setdefault(reason, []).append(text)

    payloads: list[str | None] = []
    for i, event in enumerate(batch.events):
        where = f"events[{i}]"
        payloads.append(None)
        if event.payload is not None:
            try:
                payloads[i] = payload_text(event.payload, rules.max_payload_bytes)
            except ValueError as error:
                problem("payload", f"{where}.payload: {error}")
        if event.type not in rules.types:
            problem("unknown_type", f"{where}.type: {event.type!r} is not one of {list(rules.types)}")
        if event.type in rules.rated_types:
            if event.value is None or not rules.rating_min <= event.value <= rules.rating_max:
                problem("value", f"{where}.value: a {event.type} needs a value in [{rules.rating_min}, {rules.rating_max}]")
        elif event.value is not None and not math.isfinite(event.value):
            problem("value", f"{where}.value: must be finite")
        if event.timestamp is not None and event.timestamp > now + rules.max_clock_skew_s:
            problem("timestamp", f"{where}.timestamp: {event.timestamp} is more than {rules.max_clock_skew_s:.0f} s in the future")
        if event.timestamp is not None and event.timestamp < rules.min_timestamp:
            problem("timestamp", f"{where}.timestamp: {event.timestamp} is before {rules.min_timestamp:.0f} (1990)")
    item_ids = [event.item_id for event in batch.events]
    for i, known in enumerate(known_items(item_ids) if item_ids else []):
        if not known:
            problem("unknown_item", f"events[{i}].item_id: item {item_ids[i]} is not in the catalogue")
    if problems:
        raise BatchError(422, next(iter(problems)), [text for texts in problems.values() for text in texts])
    return [
        Event(e.event_id, e.user_id, e.item_id, e.type, now if e.timestamp is None else e.timestamp, e.value, e.request_id,
              payload=payload)
        for e, payload in zip(batch.events, payloads)
    ]
