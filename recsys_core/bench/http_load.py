"""A minimal keep-alive HTTP/1.1 load generator, run as a separate process by `recsys bench serving`.

Deliberately light (no torch, no FastAPI imports) so it starts fast and spends its CPU on requests. Prints "ready"
once its connections are open, then one JSON line with the result.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import numpy as np


async def run_load(
    host: str, port: int, paths: list[str], n_requests: int, concurrency: int, max_seconds: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Keep-alive HTTP/1.1 GETs from `concurrency` connections; minimal client so the server is what is measured.
    `headers` go with every request (an API key).

    Counts statuses and which model version answered (from the JSON body), so a hot swap shows up as two versions.
    """
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    versions: dict[str, int] = {}
    marker = b'"model_version":"'
    counter = iter(range(n_requests))
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                started = time.perf_counter()
                try:
                    writer.write(f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = head.split(b" ", 2)[1].decode()
                    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                    body = await reader.readexactly(length)
                    at = body.find(marker)
                    if at >= 0:
                        version = body[at + len(marker) : body.index(b'"', at + len(marker))].decode()
                        versions[version] = versions.get(version, 0) + 1
                except (OSError, ValueError, asyncio.IncompleteReadError, StopIteration, IndexError) as error:
                    status = f"error:{type(error).__name__}"
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    print("ready", flush=True)
    started = time.perf_counter()
    deadline = started + max_seconds
    await asyncio.gather(*(worker(*connection) for connection in connections))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    errors = sum(count for status, count in statuses.items() if status != "200")
    return {
        "requests": len(latencies), "seconds": elapsed, "req_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors, "statuses": statuses,
        "versions_served": versions,
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_load(**json.loads(sys.argv[1])))))
