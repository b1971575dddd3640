"""Event ingest load: `clients` keep-alive connections POSTing /events batches, run as its own process by `recsys bench
events`. Light (no numpy, no FastAPI) so its CPU goes to requests. Prints "ready", then one JSON line: which batches each
client got acknowledged (200), so the bench can check every acknowledged event against the store, even after a crash.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any


def batch_events(prefix: str, client: int, index: int, size: int, users: int, items: list[int]) -> list[dict[str, Any]]:
    """The `index`-th batch of `client`: deterministic, so acknowledged event ids can be rebuilt from batch indices."""
    rng = random.Random(f"{prefix}/{client}/{index}")
    return [
        {"event_id": f"{prefix}-{client}-{index}-{j}", "user_id": rng.randrange(1, users + 1), "item_id": rng.choice(items),
         "type": rng.choice(("click", "click", "impression", "purchase")), "request_id": f"{prefix}-r{index}"}
        for j in range(size)
    ]  # fmt: skip


async def run_load(host: str, port: int, key: str, prefix: str, clients: int, batch: int, seconds: float, users: int,
                   items: list[int]) -> dict[str, Any]:  # fmt: skip
    """Closed loop per client; a refused connection (the service was killed) is retried until the deadline."""
    acked: dict[int, list[int]] = {c: [] for c in range(clients)}
    statuses: dict[str, int] = {}
    latencies: list[float] = []

    async def client(c: int) -> None:
        index, connection = 0, None
        while time.perf_counter() < deadline:
            body = json.dumps({"events": batch_events(prefix, c, index, batch, users, items)}).encode()
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                reader, writer = connection
                writer.write(f"POST /events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                             f"X-API-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1].decode()
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status == "200":
                    acked[c].append(index)
            except (OSError, ValueError, asyncio.IncompleteReadError, StopIteration, IndexError) as error:
                status = f"error:{type(error).__name__}"
                connection = None
                await asyncio.sleep(0.05)
            statuses[status] = statuses.get(status, 0) + 1
            index += 1

    print("ready", flush=True)
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3) if latencies else None  # noqa: E731
    n_acked = sum(len(v) for v in acked.values())
    return {
        "requests": sum(statuses.values()), "acked_requests": n_acked, "acked_events": n_acked * batch, "seconds": elapsed,
        "req_per_s": n_acked / elapsed, "events_per_s": n_acked * batch / elapsed, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
        "statuses": statuses, "acked": acked,
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_load(**json.loads(sys.argv[1])))))
