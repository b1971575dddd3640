"""What an online experiment costs the request path: the real service (uvicorn subprocess, access log on, SQLite
event store) under the same HTTP load with no experiment running and with one running (every user in it, half on a
second model, every response's exposures logged), alternated without/with for several rounds in one process so drift
and the neighbours' load hit both alike; each condition's p99 is the median of its phases' p99.

Both models have the ml-100k shape (943 users, 1,682 items) with random weights of the real class: latency depends
on shapes, not weights. Part of `recsys bench experiments` (goal: p99 with the experiment within 10% of without).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_core.bench.serving import build_random_bundle, random_ratings, run_load_client
from recsys_core.export import export_onnx
from recsys_core.serving.process import ServiceProcess
from recsys_core.tracking import MlflowSettings

N_USERS, N_ITEMS = 943, 1682
MAX_P99_RATIO = 1.10


def _register(workdir: Path) -> str:
    """Versions 1 (`champion`) and 2 (`challenger`) of two exported random models; -> the tracking URI."""
    items = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": [f"Item {i}" for i in range(1, N_ITEMS + 1)]})
    settings = MlflowSettings(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    client = settings.client()
    client.create_registered_model(settings.registered_model_name)
    for version, alias in ((1, "champion"), (2, "challenger")):
        ratings = random_ratings(N_USERS, N_ITEMS, per_user=60, seed=version)
        bundle = build_random_bundle(workdir / f"model{version}", ratings, items["item_id"].to_numpy(), seed=version)
        export_onnx(bundle, workdir / f"v{version}" / "extra_files", items)
        client.create_model_version(settings.registered_model_name, source=str(workdir / f"v{version}"))
        client.set_registered_model_alias(settings.registered_model_name, alias, str(version))
    return settings.tracking_uri


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def serving_overhead(
    n_requests: int, concurrency: int, rounds: int = 4, treatment: str = "alias:challenger"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one row per load phase, a summary with the p99 ratio). `treatment="alias:champion"` (an A/A experiment, one
    model) separates the cost of routing and logging from that of serving half the users from a second model."""
    workdir = Path(tempfile.mkdtemp(prefix="recsys-bench-experiments-"))
    rows: list[dict[str, Any]] = []
    try:
        uri = _register(workdir)
        service = ServiceProcess(["--registry-alias", "champion", "--tracking-uri", uri, "--providers", "cpu", "--threads", "1",
                                  "--reload-interval", "5", "--event-store", f"sqlite:///{workdir / 'events.sqlite'}"],
                                 workdir / "server.log", env={"RECSYS_HOME": str(workdir)}).start()  # fmt: skip
        client, port = service.client(service.admin_key), service.port
        try:
            paths = [f"/recommendations/{u}?k=10" for u in np.random.default_rng(0).permutation(np.arange(1, N_USERS + 1))]
            spec = {"host": "127.0.0.1", "port": port, "paths": paths, "n_requests": n_requests,
                    "concurrency": concurrency, "max_seconds": 120.0}  # fmt: skip
            run_load_client({**spec, "n_requests": min(n_requests, 1000)})  # warm-up: connections, caches
            arms = {"arms": {"control": "alias:champion", "treatment": treatment}}
            client.put("/experiments/warm-up", json=arms).raise_for_status()  # downloads the challenger into the cache once
            for i, phase in enumerate(["without", "with"] * rounds):
                if phase == "with":
                    client.put(f"/experiments/overhead-{i}", json=arms).raise_for_status()
                else:
                    for e in client.get("/experiments").json():
                        if e["status"] == "running":
                            client.post(f"/experiments/{e['name']}/stop").raise_for_status()
                result = run_load_client(spec)
                rows.append({"phase": phase, "round": i // 2 + 1, **{k: result[k] for k in ("req_per_s", "p50_ms", "p99_ms", "errors")}})
                print(f"  experiment {phase:<7} {result['req_per_s']:.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
                      f"p99 {result['p99_ms']:.2f} ms  errors {result['errors']}")  # fmt: skip
            metrics = client.get("/metrics").text
        finally:
            client.close()
            service.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    p99 = {phase: float(np.median([r["p99_ms"] for r in rows if r["phase"] == phase])) for phase in ("without", "with")}
    summary = {"p99_ms_without": p99["without"], "p99_ms_with": p99["with"], "p99_ratio": p99["with"] / p99["without"],
               "exposures_logged": _metric(metrics, "recsys_exposures_logged"),
               "exposures_dropped": _metric(metrics, "recsys_exposures_dropped"),
               "requests_with_experiment": rounds * n_requests, "concurrency": concurrency, "rounds": rounds,
               "treatment": treatment}  # fmt: skip
    return rows, summary
