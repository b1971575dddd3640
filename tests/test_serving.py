"""The HTTP service for real: uvicorn in a subprocess on 127.0.0.1, queried, hot-swapped, fed a corrupt model, stopped."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_core.bench.serving import build_random_bundle, random_ratings, run_load_client
from recsys_core.export import export_onnx
from recsys_core.serving.serve import listen
from recsys_dagster.cli import build_parser
from servers import recsys_service

N_USERS, N_ITEMS = 30, 50
ITEMS = pd.DataFrame({"item_id": np.arange(1, N_ITEMS + 1), "title": [f"Movie {i}" for i in range(1, N_ITEMS + 1)]})


def export_model(root: Path, seed: int) -> Path:
    ratings = random_ratings(N_USERS, N_ITEMS, per_user=10, seed=seed)
    model_dir = build_random_bundle(root / f"model{seed}", ratings, ITEMS["item_id"].to_numpy(), dim=16, history_len=8, seed=seed)
    export_onnx(model_dir, root / f"onnx{seed}", ITEMS)
    return root / f"onnx{seed}"


def point(link: Path, target: Path) -> None:
    """Atomic replacement of the served directory: a new symlink renamed over the old one."""
    fresh = link.with_name(link.name + ".new")
    fresh.symlink_to(target)
    os.replace(fresh, link)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not reached in time")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("serving")
    first, second = export_model(root, 1), export_model(root, 2)
    served = root / "served"
    point(served, first)
    log_path = root / "server.log"
    with recsys_service(served, log_path, "--reload-interval", "0.3", "--max-k", "50", "--max-history", "20") as client:
        yield {"client": client, "root": root, "served": served, "first": first, "second": second, "log": log_path}


def fingerprint(onnx_dir: Path) -> str:
    return json.loads((onnx_dir / "manifest.json").read_text())["fingerprint"]


def test_recommendations_with_reasons_and_fallbacks(service: dict) -> None:
    client = service["client"]
    known = int(random_ratings(N_USERS, N_ITEMS, per_user=10, seed=1)["user_id"].iloc[0])
    body = client.get(f"/recommendations/{known}", params={"k": 5}).json()
    assert body["model_version"] == fingerprint(service["first"]) and body["source"] == "model"
    assert len(body["items"]) == 5 and all(item["title"].startswith("Movie") for item in body["items"])
    assert all(item["reason"]["text"].startswith("because you liked Movie") for item in body["items"])

    unknown = client.get("/recommendations/987654", params={"k": 3}).json()
    assert unknown["source"] == "popularity" and len(unknown["items"]) == 3

    fresh = client.post("/recommendations", json={"history": [{"item_id": 3, "rating": 5}, {"item_id": 4}], "k": 4}).json()
    assert fresh["source"] == "history" and not {3, 4} & {item["item_id"] for item in fresh["items"]}
    assert {item["reason"]["item_id"] for item in fresh["items"]} <= {3, 4}
    mixed = client.post("/recommendations", json={"user_id": known, "history": [{"item_id": 7}], "k": 4}).json()
    assert mixed["source"] == "model" and 7 not in {item["item_id"] for item in mixed["items"]}
    empty = client.post("/recommendations", json={"k": 2}).json()
    assert empty["source"] == "popularity"

    similar = client.get("/items/3/similar", params={"k": 4}).json()
    assert len(similar["items"]) == 4 and 3 not in {item["item_id"] for item in similar["items"]}


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("GET", "/recommendations/abc", None, 422),
        ("GET", "/recommendations/-5", None, 422),
        ("GET", "/recommendations/1?k=0", None, 422),
        ("GET", "/recommendations/1?k=51", None, 422),
        ("GET", "/items/999999/similar", None, 404),
        ("POST", "/recommendations", {"history": [{"item_id": 999999}]}, 422),
        ("POST", "/recommendations", {"history": [{"item_id": 1}] * 21}, 422),
        ("POST", "/recommendations", {"history": [{"item_id": 1}], "k": 500}, 422),
        ("POST", "/recommendations", {"history": [{"item": 1}]}, 422),
        ("POST", "/recommendations", "not json", 400),
        ("GET", "/nowhere", None, 404),
    ],
)
def test_malformed_requests_get_clear_4xx(service: dict, method: str, path: str, payload, status: int) -> None:
    if isinstance(payload, str):
        response = service["client"].request(method, path, content=payload, headers={"content-type": "application/json"})
    else:
        response = service["client"].request(method, path, json=payload)
    assert response.status_code == status, response.text
    assert "detail" in response.json()


def test_docs_and_metrics(service: dict) -> None:
    client = service["client"]
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/recommendations/{user_id}", "/recommendations", "/health"}
    client.get("/recommendations/1")
    text = client.get("/metrics").text
    assert 'recsys_http_requests_total{method="GET",route="/recommendations/{user_id}",status="200"}' in text
    assert "recsys_http_request_duration_seconds_bucket" in text
    assert "recsys_model_info{" in text and "recsys_model_reloads_total" in text


def test_load_generator_against_the_service(service: dict) -> None:
    port = int(str(service["client"].base_url).rsplit(":", 1)[1].rstrip("/"))
    spec = {"host": "127.0.0.1", "port": port, "paths": ["/recommendations/1?k=5", "/recommendations/999999?k=5"],
            "n_requests": 200, "concurrency": 4, "max_seconds": 30.0}  # fmt: skip
    result = run_load_client(spec)
    assert result["requests"] == 200 and result["errors"] == 0 and result["statuses"] == {"200": 200}
    assert sum(result["versions_served"].values()) == 200 and result["req_per_s"] > 0


def test_hot_swap_then_corrupt_model_is_refused(service: dict) -> None:
    client, served = service["client"], service["served"]
    version = lambda: client.get("/health").json()["model_version"]  # noqa: E731
    point(served, service["second"])
    statuses = []
    deadline = time.time() + 60
    while version() != fingerprint(service["second"]) and time.time() < deadline:
        statuses.append(client.get("/recommendations/1", params={"k": 5}).status_code)
    assert version() == fingerprint(service["second"]), service["log"].read_text()[-2000:]
    assert set(statuses) <= {200}

    corrupt = shutil.copytree(service["second"], service["root"] / "corrupt")
    (corrupt / "topk.onnx").write_bytes(b"\x00garbage")
    point(served, corrupt)
    wait_for(lambda: client.get("/health").json()["refused"] >= 1)
    health = client.get("/health").json()
    assert health["model_version"] == fingerprint(service["second"]) and "cannot load" in health["last_error"]
    assert health["status"] == "degraded"
    assert client.get("/recommendations/1").status_code == 200

    point(served, service["first"])  # a later good model clears the stale error
    wait_for(lambda: version() == fingerprint(service["first"]))
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["last_error"] is None


def test_cli_registers_serve_and_bench() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--model-dir", "x", "--port", "9"]).port == 9
    assert parser.parse_args(["bench", "serving", "--quick"]).quick
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--model-dir", "x", "--registry-alias", "champion"])


def test_port_file_names_the_port_already_listening(tmp_path: Path) -> None:
    """`--port 0 --port-file`: the port is bound before it is written, so a parent connecting to it reaches this
    service and no other process that happened to pick the same free port."""
    port_file = tmp_path / "serve.port"
    with listen("127.0.0.1", 0, port_file) as sock:
        port = int(port_file.read_text())
        assert port == sock.getsockname()[1] and port > 0
        assert not port_file.with_name("serve.port.partial").exists()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_taken_port_is_a_clear_error(service: dict) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "recsys_core.serving.serve", "--model-dir", str(service["first"]), "--port", str(port),
             "--providers", "cpu", "--event-store", "off", "--experiments-db", "off"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "RECSYS_HOME": str(service["root"])},
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"recsys serve: cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
