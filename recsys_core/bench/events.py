"""Live events against the real service (uvicorn subprocess on 127.0.0.1), on the SQLite and the Redis store.

Per store: ingest throughput with batches of 100 events and with single-event requests (`--clients` concurrent keep-alive
connections from a separate load process); event-to-changed-recommendation latency (POST one click on the user's top
item, then GET until it is gone: the time from sending the event to the changed response); acknowledged == stored ==
landed (landed = what `landed_events` reads for each window: `read_received` + `events_frame`), by event id; and
durability: the service (and for Redis the `redis-server`, AOF `appendfsync always`) killed with SIGKILL mid-load and
restarted, then every acknowledged event looked up in the store. Random weights of the real model class.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from recsys_core.bench.event_load import batch_events
from recsys_core.bench.report import write_report
from recsys_core.bench.serving import _wait_healthy, build_random_bundle, random_ratings
from recsys_core.events import EventMapping, events_frame, open_store
from recsys_core.events.feedback import window_bounds, window_key
from recsys_core.events.redis_process import RedisServer
from recsys_core.export import export_onnx
from recsys_core.serving.auth import hash_key
from recsys_core.serving.process import spawn_serve

KEY = "bench-events-write-key"
# Store name -> its durability setting (SQLite `synchronous`, Redis `appendfsync`); each fsync costs what the disk does.
DURABILITY = {"sqlite": "FULL", "sqlite-normal": "NORMAL", "redis": "always", "redis-everysec": "everysec"}
N_USERS, N_ITEMS = 500, 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--backends", default="sqlite,redis",
                        help=f"comma-separated, of {list(DURABILITY)} (sqlite = synchronous FULL, redis = appendfsync always)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive connections posting events")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput phase")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke run")


class Service:
    """`recsys serve` in a subprocess that can be SIGKILLed and started again on the same store and port: the first
    start lets the OS pick the port (`--port 0 --port-file`, no race with other processes), later ones reuse it."""

    def __init__(
        self, model_dir: Path, store_url: str, workdir: Path, keys: dict[str, list[str]] | None = None, *extra: str
    ) -> None:
        """`keys`: clear key -> scopes (hashed into the keys file); default the bench's write key."""
        self.port, self.workdir, self.process = 0, workdir, None
        keys_file = workdir / "keys.json"
        entries = [{"name": f"key{i}", "sha256": hash_key(key), "scopes": scopes}
                   for i, (key, scopes) in enumerate((keys or {KEY: ["write"]}).items())]  # fmt: skip
        keys_file.write_text(json.dumps({"keys": entries}))
        self.args = ["--model-dir", str(model_dir), "--reload-interval", "0", "--providers", "cpu", "--event-store",
                     store_url, "--api-keys", str(keys_file), *extra]  # fmt: skip

    def start(self) -> Service:
        args = [*self.args, "--port", str(self.port)]
        self.process, self.port = spawn_serve(args, self.workdir / "server.port", self.workdir / "server.log")
        _wait_healthy(self.port)
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_load(port: int, prefix: str, clients: int, batch: int, seconds: float) -> subprocess.Popen:
    spec = {"host": "127.0.0.1", "port": port, "key": KEY, "prefix": prefix, "clients": clients, "batch": batch,
            "seconds": seconds, "users": N_USERS + 100, "items": list(range(1, N_ITEMS + 1))}  # fmt: skip
    load = subprocess.Popen([sys.executable, "-m", "recsys_core.bench.event_load", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    if load.stdout is None or load.stdout.readline().strip() != "ready":
        raise RuntimeError("the event load generator did not start")
    return load


def finish_load(load: subprocess.Popen, prefix: str, batch: int) -> tuple[dict[str, Any], set[str]]:
    """The load result without its per-batch lists, and the ids of every acknowledged event."""
    out, _ = load.communicate(timeout=600)
    result = json.loads(out.strip().splitlines()[-1])
    items = list(range(1, N_ITEMS + 1))
    acked = {e["event_id"] for c, indices in result.pop("acked").items() for i in indices
             for e in batch_events(prefix, int(c), i, batch, N_USERS + 100, items)}  # fmt: skip
    return result, acked


def change_latency(port: int, samples: int, seed: int) -> tuple[dict[str, Any], set[str]]:
    """Per sample: a user's top item, one click on it, then GETs until it is gone; ms from sending the event."""
    rng = np.random.default_rng(seed)
    headers = {"X-API-Key": KEY}
    latencies, changed_first, acked = [], 0, set()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for n in range(samples):
            user = int(rng.integers(1, N_USERS + 1)) if n % 2 else 700_000 + n  # known users and brand-new ones
            top = client.get(f"/recommendations/{user}", params={"k": 10}).json()["items"][0]["item_id"]
            event = {"event_id": f"latency-{seed}-{n}", "user_id": user, "item_id": top, "type": "click"}
            started = time.perf_counter()
            client.post("/events", json={"events": [event]}, headers=headers).raise_for_status()
            acked.add(event["event_id"])
            for attempt in range(100):
                items = [i["item_id"] for i in client.get(f"/recommendations/{user}", params={"k": 10}).json()["items"]]
                if top not in items:
                    changed_first += attempt == 0
                    break
            latencies.append((time.perf_counter() - started) * 1000)
    ms = np.array(latencies)
    row = {"samples": samples, "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
           "changed_on_first_read": changed_first}  # fmt: skip
    return row, acked


def consistency(store_url: str, acked: set[str]) -> dict[str, Any]:
    """Acknowledged vs stored vs landed, by event id (doubles = rows beyond the distinct ids)."""
    store = open_store(store_url)
    try:
        stored, after = [], 0
        while page := store.read(after, 10_000):
            stored += [e.event_id for e in page]
            after = page[-1].seq
        windows = sorted({window_key(e.received_at) for e in store.read(0, 10**9)})
        landed = pd.concat([events_frame(store.read_received(*window_bounds(w)), EventMapping()) for w in windows])
    finally:
        store.close()
    stored_set, landed_ids = set(stored), list(landed["event_id"])
    return {"acknowledged": len(acked), "stored": len(stored), "landed": len(landed_ids), "windows": len(windows),
            "lost": len(acked - stored_set), "doubled": len(stored) - len(stored_set) + len(landed_ids) - len(set(landed_ids)),
            "landed_missing": len(stored_set - set(landed_ids))}  # fmt: skip


def bench_backend(backend: str, model_dir: Path, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True)
    redis = RedisServer(workdir / "redis", appendfsync=DURABILITY[backend]).start() if backend.startswith("redis") else None
    url = redis.url if redis else f"sqlite:///{workdir / 'events.sqlite'}?synchronous={DURABILITY[backend]}"
    service = Service(model_dir, url, workdir).start()
    rows, acked = [], set()
    try:
        acked |= finish_load(start_load(service.port, "warm", args.clients, 100, 1.0), "warm", 100)[1]  # connections, caches
        for prefix, batch in (("batch100", 100), ("single", 1)):
            result, ids = finish_load(start_load(service.port, prefix, args.clients, batch, args.seconds), prefix, batch)
            acked |= ids
            rows.append({"store": backend, "phase": f"ingest, batch of {batch}", "clients": args.clients, **result})
            print(f"  {backend}: batch {batch}: {result['events_per_s']:.0f} events/s, {result['req_per_s']:.0f} req/s", flush=True)
        latency, ids = change_latency(service.port, args.latency_samples, seed=len(rows))
        acked |= ids
        rows.append({"store": backend, "phase": "event -> changed recommendation", **latency})
        rows.append({"store": backend, "phase": "acknowledged == stored == landed", **consistency(url, acked)})
        # Durability: kill everything mid-load with SIGKILL, start it again, then look up every acknowledged event.
        load = start_load(service.port, "crash", args.clients, 10, 3.0 * args.seconds / 5 + 4.0)
        time.sleep(args.seconds / 5 + 1.0)
        service.kill()
        if redis:
            redis.kill()
            redis.start()
        service.start()
        result, crash_acked = finish_load(load, "crash", 10)
        check = consistency(url, acked | crash_acked)
        rows.append({"store": backend, "phase": "SIGKILL mid-load + restart", "acknowledged": check["acknowledged"],
                     "acked_during_crash_run": len(crash_acked), "stored": check["stored"], "lost": check["lost"],
                     "doubled": check["doubled"], "statuses": result["statuses"]})  # fmt: skip
    finally:
        service.stop()
        if redis:
            redis.stop()
    return rows


def evaluate_goals(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    goals = {}
    for backend in dict.fromkeys(r["store"] for r in rows):
        phase = {r["phase"]: r for r in rows if r["store"] == backend}
        batch, single = phase["ingest, batch of 100"], phase["ingest, batch of 1"]
        latency, same, crash = phase["event -> changed recommendation"], phase["acknowledged == stored == landed"], phase["SIGKILL mid-load + restart"]
        goals |= {
            f"{backend}: ingest >= 5000 events/s in batches of 100": {
                "goal": ">= 5000", "value": round(batch["events_per_s"]), "passed": batch["events_per_s"] >= 5000},
            f"{backend}: single-event requests >= 1000 req/s": {
                "goal": ">= 1000", "value": round(single["req_per_s"]), "passed": single["req_per_s"] >= 1000},
            f"{backend}: acknowledged == stored == landed (0 lost, 0 doubled)": {
                "goal": "0 lost, 0 doubled", "value": f"{same['acknowledged']} acked, {same['stored']} stored, {same['landed']} landed",
                "passed": same["acknowledged"] == same["stored"] == same["landed"] and same["lost"] == same["doubled"] == 0},
            f"{backend}: event-to-changed-recommendation p99 <= 20 ms": {
                "goal": "<= 20 ms", "value": latency["p99_ms"], "passed": latency["p99_ms"] <= 20},
            f"{backend}: every acknowledged event survives SIGKILL": {
                "goal": "0 lost", "value": f"{crash['lost']} lost of {crash['acknowledged']} ({crash['acked_during_crash_run']} in the crash run)",
                "passed": crash["lost"] == 0 and crash["doubled"] == 0 and crash["acked_during_crash_run"] > 0},
        }  # fmt: skip
    return goals


def fsync_ms(n: int = 50) -> float:
    """What one fsync of a small append costs on the temp disk: the floor of a durable append."""
    with tempfile.NamedTemporaryFile() as handle:
        started = time.perf_counter()
        for _ in range(n):
            handle.write(b"x" * 200)
            handle.flush()
            os.fsync(handle.fileno())
        return (time.perf_counter() - started) / n * 1000


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.seconds, args.latency_samples = 2.0, 50
    workdir = Path(tempfile.mkdtemp(prefix="recsys-bench-events-"))
    started, load_start = time.perf_counter(), os.getloadavg()
    try:
        print("building and exporting a model with random weights ...", flush=True)
        ratings = random_ratings(N_USERS, N_ITEMS, per_user=30)
        model = build_random_bundle(workdir / "model", ratings, np.arange(1, N_ITEMS + 1), dim=64, history_len=50)
        export_onnx(model, workdir / "onnx")
        rows = []
        for backend in args.backends.split(","):
            rows += bench_backend(backend, workdir / "onnx", workdir / backend, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    goals = evaluate_goals(rows)
    write_report("events", rows, args.json, goals=goals, seconds=round(time.perf_counter() - started, 1),
                 load_average_start=load_start, load_average_end=os.getloadavg(),
                 durability=DURABILITY, fsync_ms=round(fsync_ms(), 2),
                 notes="service, stores and load generator share the machine; durable appends are bound by fsync_ms "
                       "(one fsync per group commit)")  # fmt: skip
    print("\ngoals:")
    for goal, outcome in goals.items():
        print(f"  {'PASS' if outcome['passed'] else 'MISS'}  {goal}: {outcome['value']}")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="recsys bench events", description=__doc__)
    add_arguments(cli)
    sys.exit(run(cli.parse_args()))
