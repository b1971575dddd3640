"""The production event store on Redis: a stream is the durable, ordered log; a capped list per user is the live history.

One Lua script appends a batch atomically: for each event not yet in the `ids` hash, XADD to the stream, remember its id,
and (for history types) RPUSH + LTRIM the user's list. Stream ids (`<ms>-<n>`) are strictly increasing, so they are the
cursor (`seq = ms << 20 | n`) and the ms part is the monotonic server `received_at`.

A stream entry holds the event's columns as one compact JSON list (field `e`) and, when it has one, its payload
(field `payload`); entries written before payloads existed simply lack the field. A history row is
`<stream id> <e>[<LF><payload>]`: `e` (JSON) never holds a raw newline, so the first one splits.

Durability is the server's AOF setting: `appendfsync always` fsyncs before a write is acknowledged, so an acknowledged
event survives a killed `redis-server` and a power cut; `everysec` also survives a killed process (the AOF write happens
before the reply) but may lose up to about a second of acknowledged events on a power cut or OS crash. Run Redis with
`--appendonly yes --appendfsync always` for the event log (see `recsys_core.events.redis_process`).
"""

from __future__ import annotations

import dataclasses
import json

import redis

from recsys_core.events.schema import Event
from recsys_core.events.store import DEFAULT_HISTORY_TYPES, AppendResult, EventStore

SEQ_BITS = 20
PAGE = 10_000
APPEND = """
local stream, ids, prefix, cap = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 5 do
  local event_id, user, columns, payload, in_history = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('HSETNX', ids, event_id, '') == 1 then
    local id, row
    if payload == '' then
      id = redis.call('XADD', stream, '*', 'e', columns)
      row = id .. ' ' .. columns
    else
      id = redis.call('XADD', stream, '*', 'e', columns, 'payload', payload)
      row = id .. ' ' .. columns .. '\\n' .. payload
    end
    redis.call('HSET', ids, event_id, id)
    if in_history == '1' then
      redis.call('RPUSH', prefix .. user, row)
      redis.call('LTRIM', prefix .. user, -cap, -1)
    end
    out[#out + 1] = id
  else
    out[#out + 1] = ''
  end
end
return out
"""


def _seq(stream_id: str) -> int:
    ms, n = stream_id.split("-")
    return int(ms) << SEQ_BITS | int(n)


def _stream_id(seq: int) -> str:
    return f"{seq >> SEQ_BITS}-{seq & ((1 << SEQ_BITS) - 1)}"


def _columns(e: Event) -> str:
    return json.dumps([e.event_id, e.user_id, e.item_id, e.type, e.timestamp, e.value, e.request_id], separators=(",", ":"))


def _stamped(event: Event, stream_id: str) -> Event:
    seq = _seq(stream_id)
    return dataclasses.replace(event, received_at=(seq >> SEQ_BITS) / 1000.0, seq=seq)


def _event(stream_id: str, columns: str, payload: str | None = None) -> Event:
    return _stamped(Event(*json.loads(columns), payload=payload), stream_id)


def _entry_event(stream_id: str, fields: dict[str, str]) -> Event:
    return _event(stream_id, fields["e"], fields.get("payload"))


def _history_event(row: str) -> Event:
    stream_id, rest = row.split(" ", 1)
    columns, newline, payload = rest.partition("\n")
    return _event(stream_id, columns, payload if newline else None)


class RedisEventStore(EventStore):
    def __init__(
        self, url: str, history_cap: int = 200, history_types: tuple[str, ...] = DEFAULT_HISTORY_TYPES, prefix: str = "recsys:events"
    ) -> None:
        super().__init__(history_cap, history_types)
        self.url, self.prefix = url, prefix
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, health_check_interval=10)
        self._append = self.client.register_script(APPEND)

    def append(self, events: list[Event]) -> AppendResult:
        if not events:
            return AppendResult([], 0)
        argv: list[str | int] = [f"{self.prefix}:history:", self.history_cap]
        for e in events:
            argv += [e.event_id, e.user_id, _columns(e), e.payload or "", "1" if e.type in self.history_types else "0"]
        ids = self._append(keys=[self.prefix, f"{self.prefix}:ids"], args=argv)
        stored = [_stamped(e, stream_id) for stream_id, e in zip(ids, events) if stream_id]
        return AppendResult(stored, len(events) - len(stored))

    def read(self, after: int = 0, limit: int = PAGE) -> list[Event]:
        entries = self.client.xrange(self.prefix, min=f"({_stream_id(after)}", max="+", count=limit)
        return [_entry_event(stream_id, fields) for stream_id, fields in entries]

    def read_received(self, start: float, end: float) -> list[Event]:
        events: list[Event] = []
        low, high = f"{int(-(-start * 1000 // 1))}-0", f"({int(-(-end * 1000 // 1))}-0"
        while entries := self.client.xrange(self.prefix, min=low, max=high, count=PAGE):
            events += [_entry_event(stream_id, fields) for stream_id, fields in entries]
            low = f"({entries[-1][0]}"
        return events

    def history(self, user_id: int, since: float = 0.0, limit: int | None = None) -> list[Event]:
        rows = self.client.lrange(f"{self.prefix}:history:{user_id}", -self.history_cap, -1)
        return self._recent([_history_event(row) for row in rows], since, limit)

    def forget_user(self, user_id: int) -> int:
        """Pages through the stream (a Lua scan would block Redis for the whole log), then deletes the user's entries,
        their idempotency ids and their history list in one transaction."""
        entries: list[tuple[str, str]] = []
        low = "-"
        while page := self.client.xrange(self.prefix, min=low, max="+", count=PAGE):
            for stream_id, fields in page:
                event = json.loads(fields["e"])
                if event[1] == user_id:
                    entries.append((stream_id, event[0]))
            low = f"({page[-1][0]}"
        with self.client.pipeline(transaction=True) as pipe:
            if entries:
                pipe.xdel(self.prefix, *[stream_id for stream_id, _ in entries])
                pipe.hdel(f"{self.prefix}:ids", *[event_id for _, event_id in entries])
            pipe.delete(f"{self.prefix}:history:{user_id}")
            results = pipe.execute()
        return int(results[0]) if entries else 0

    def count(self) -> int:
        return int(self.client.xlen(self.prefix))

    def ping(self) -> bool:
        return bool(self.client.ping())

    def describe(self) -> str:
        return f"{self.url} (stream {self.prefix})"

    def close(self) -> None:
        self.client.close()
