"""`recsys simulate`: simulated users with known preferences request recommendations from the real service over HTTP
and click according to those preferences, at a configured rate for a configured time.

Personas are the synthetic data set's users (`--n-users`, `--n-items`, `--n-ratings`, `--data-seed` must match the data
the served model was trained on, default the embedded synthetic data set); a persona requests as its own user_id.
The arm and request_id come from the response when the service stamps them (an experiment is running), else the
arm is the served model version and the simulator makes up the request_id. Where the records go is a `RecordSink`:
Parquet files (`--sink parquet`, read by `records.ParquetRecords`), or the real loop (`--sink service`): the service
already logged the exposures into its event store, and the clicks go to its `POST /events` with their request_id,
from where `records.EventStoreRecords` reads both.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import pandas as pd

from recsys_core.experiments.simulation import SimulatedUsers, exposure_and_click_rows
from recsys_core.synthetic import SyntheticConfig


class RecordSink(Protocol):
    def write(self, exposures: pd.DataFrame, clicks: pd.DataFrame) -> None: ...


class ParquetSink:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def write(self, exposures: pd.DataFrame, clicks: pd.DataFrame) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        exposures.to_parquet(self.directory / "exposures.parquet", index=False)
        clicks.to_parquet(self.directory / "clicks.parquet", index=False)


class ServiceSink:
    """Clicks to the service's `POST /events` (a key with scope `write`), in batches; exposures are the service's own."""

    def __init__(self, client: httpx.Client, api_key: str, batch: int = 500) -> None:
        self.client, self.headers, self.batch = client, {"X-API-Key": api_key}, batch

    def write(self, exposures: pd.DataFrame, clicks: pd.DataFrame) -> None:
        events = [{"event_id": f"sim-{c.request_id}-{c.item_id}", "user_id": int(c.user_id), "item_id": int(c.item_id),
                   "type": "click", "timestamp": float(c.timestamp), "request_id": c.request_id}
                  for c in clicks.itertuples()]  # fmt: skip
        for start in range(0, len(events), self.batch):
            response = self.client.post("/events", json={"events": events[start : start + self.batch]}, headers=self.headers)
            if response.status_code != 200:
                raise RuntimeError(f"POST /events answered {response.status_code}: {response.text[:500]}")


def simulate_http(
    client: httpx.Client, simulated: SimulatedUsers, *, rate: float, duration_s: float, k: int = 10, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Open-loop traffic: request n is due at n / rate seconds; returns (exposures, clicks, counters)."""
    rng = np.random.default_rng(seed)
    exposures: list[dict] = []
    clicks: list[dict] = []
    counters = {"requests": 0, "errors": 0}
    started = time.monotonic()
    while (now := time.monotonic()) - started < duration_s:
        due = started + counters["requests"] / rate
        if due > now:
            time.sleep(due - now)
        persona = int(rng.integers(1, simulated.n_users + 1))
        counters["requests"] += 1
        sent = time.perf_counter()
        try:
            response = client.get(f"/recommendations/{persona}", params={"k": k})
        except httpx.HTTPError:
            counters["errors"] += 1
            continue
        latency_ms = (time.perf_counter() - sent) * 1000
        if response.status_code != 200:
            counters["errors"] += 1
            continue
        body = response.json()
        items = np.array([item["item_id"] for item in body["items"]], dtype=np.int64)
        clicked = simulated.draw_clicks(np.array([persona]), items[None, :], rng)[0] if items.size else items.astype(bool)
        e, c = exposure_and_click_rows(
            body.get("request_id") or f"sim-{seed}-{counters['requests']}", persona, body.get("arm") or body["model_version"],
            items, clicked, time.time(), latency_ms=latency_ms, fallback=body.get("source") != "model",
        )  # fmt: skip
        exposures += e
        clicks += c
    columns = ["user_id", "item_id", "timestamp", "request_id"]
    return pd.DataFrame(exposures), pd.DataFrame(clicks, columns=columns), counters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the recsys service")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sink", default="parquet", choices=["parquet", "service"],
                        help="parquet: write --out; service: post the clicks to the service's POST /events")
    parser.add_argument("--out", default="simulated", help="folder for exposures.parquet and clicks.parquet")
    parser.add_argument("--api-key", default=os.environ.get("RECSYS_API_KEY", ""),
                        help="key with scope write, for --sink service (default $RECSYS_API_KEY)")
    parser.add_argument("--seed", type=int, default=0, help="seed of personas and clicks")
    defaults = SyntheticConfig()
    parser.add_argument("--n-users", type=int, default=defaults.n_users)
    parser.add_argument("--n-items", type=int, default=defaults.n_items)
    parser.add_argument("--n-ratings", type=int, default=defaults.n_ratings)
    parser.add_argument("--data-seed", type=int, default=defaults.seed, help="seed of the synthetic data set")


def run(args: Any) -> int:
    if args.rate <= 0 or args.duration <= 0:
        raise SystemExit("--rate and --duration must be > 0")
    config = SyntheticConfig(n_users=args.n_users, n_items=args.n_items, n_ratings=args.n_ratings, seed=args.data_seed)
    if args.sink == "service" and not args.api_key:
        raise SystemExit("--sink service needs --api-key (or $RECSYS_API_KEY) with scope write")
    with httpx.Client(base_url=args.url, timeout=10) as client:
        exposures, clicks, counters = simulate_http(client, SimulatedUsers(config), rate=args.rate,
                                                    duration_s=args.duration, k=args.k, seed=args.seed)  # fmt: skip
        sink = ServiceSink(client, args.api_key) if args.sink == "service" else ParquetSink(args.out)
        sink.write(exposures, clicks)
    shown = len(exposures)
    where = f"{args.url}/events" if args.sink == "service" else f"{args.out}/exposures.parquet and clicks.parquet"
    print(f"{counters['requests']} requests ({counters['errors']} errors), {shown} items shown, {len(clicks)} clicks "
          f"(CTR {len(clicks) / max(shown, 1):.4f}); wrote {where}")  # fmt: skip
    return 0 if counters["requests"] and counters["errors"] < counters["requests"] else 1
