"""Online experiments in the service (issue 12): users routed to arms by the salted hash and responses stamped,
exposures logged through the event store (SQLite and a real Redis) and attributed, admin endpoints behind an admin key,
and an experiment that survives a restart of the real uvicorn service."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from dagster import DagsterInstance, materialize
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from recsys_core.events.redis_process import free_port
from recsys_core.events import open_store
from recsys_core.experiments import attribution
from recsys_core.experiments.assignment import Assigner, assign_shares
from recsys_core.experiments.definitions import ExperimentStore
from recsys_core.experiments.exposures import Exposure, exposures_frame
from recsys_core.experiments.online_report import build_online_report
from recsys_core.experiments.records import EventStoreRecords
from recsys_core.experiments.simulate_command import ServiceSink, simulate_http
from recsys_core.experiments.simulation import SimulatedUsers
from recsys_core.serving.auth import hash_key
from recsys_core.serving.exposure_log import ExposureLog
from recsys_core.serving.process import wait_ready
from recsys_core.serving.reload import RegistrySource
from recsys_core.serving.serve import build_service
from recsys_core.synthetic import SyntheticConfig
from recsys_core.tracking import MlflowSettings
from recsys_dagster.assets.online_ab import experiments, online_ab_report
from recsys_dagster.resources.tracking import MlflowResource
from servers import Processes
from test_serving import N_ITEMS, N_USERS, export_model, wait_for

ADMIN, WRITE = "admin-key-for-tests", "write-key-for-tests"
AS_ADMIN, AS_WRITER = {"X-API-Key": ADMIN}, {"X-API-Key": WRITE}
MODEL = "recsys-hybrid"
ARMS = {"control": "alias:champion", "treatment": "alias:challenger"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two exported models, each as a registry version's artefacts would hold it (`<version>/extra_files/`)."""
    root = tmp_path_factory.mktemp("arms")
    for seed in (1, 2):
        export_model(root, seed).rename(root.joinpath(f"v{seed}").mkdir() or root / f"v{seed}" / "extra_files")
    return root


def register(exported: Path) -> MlflowSettings:
    """Versions 1 (`champion`) and 2 (`challenger`) in this test's registry under $RECSYS_HOME."""
    settings = MlflowSettings(registered_model_name=MODEL)
    client = settings.client()
    client.create_registered_model(MODEL)
    for version, alias in (("1", "champion"), ("2", "challenger")):
        client.create_model_version(MODEL, source=str(exported / f"v{version}"))
        client.set_registered_model_alias(MODEL, alias, version)
    return settings


def keys_file(root: Path) -> Path:
    path = root / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "admin", "sha256": hash_key(ADMIN), "scopes": ["admin"]},
                                         {"name": "writer", "sha256": hash_key(WRITE), "scopes": ["write"]}]}))  # fmt: skip
    return path


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
    else:
        yield request.getfixturevalue("redis_server").url


def test_users_get_stable_arms_stamped_responses_and_logged_exposures(exported: Path, tmp_path: Path, store_url: str) -> None:
    settings = register(exported)
    app = build_service(RegistrySource(settings, "champion", tmp_path / "cache"), reload_interval=0, providers="cpu",
                        event_store=store_url, api_keys=str(keys_file(tmp_path)), settings=settings)  # fmt: skip
    users = list(range(1, 31))
    with TestClient(app) as client:
        body = {"arms": ARMS, "min_users_per_arm": 5}
        assert client.put("/experiments/split", json=body).status_code == 401
        assert client.put("/experiments/split", json=body, headers=AS_WRITER).status_code == 403
        assert client.get("/experiments", headers=AS_WRITER).status_code == 403
        bad = client.put("/experiments/split", json={**body, "arms": {"a": "alias:nope", "b": "alias:champion"}}, headers=AS_ADMIN)
        assert bad.status_code == 422 and "alias:nope" in bad.json()["detail"]
        created = client.put("/experiments/split", json=body, headers=AS_ADMIN)
        assert created.status_code == 201 and created.json()["served"], created.text
        assert client.put("/experiments/split", json=body, headers=AS_ADMIN).status_code == 409

        first = {u: client.get(f"/recommendations/{u}", headers={"X-Request-ID": f"req-{u}"}).json() for u in users}
        again = {u: client.get(f"/recommendations/{u}").json() for u in users}
        expected = assign_shares(np.array(users), "split", {"control": 0.5, "treatment": 0.5})
        for user, arm in zip(users, expected):
            assert (first[user]["experiment"], first[user]["arm"]) == ("split", arm) and again[user]["arm"] == arm
            assert first[user]["model_version"] == {"control": "1", "treatment": "2"}[arm]
            assert first[user]["request_id"] == f"req-{user}" and again[user]["request_id"] != f"req-{user}"
        assert len(set(expected)) == 2  # both arms served
        clicked = first[users[0]]["items"][0]["item_id"]
        click = {"event_id": "c1", "user_id": users[0], "item_id": clicked, "type": "click", "request_id": f"req-{users[0]}"}
        assert client.post("/events", json={"events": [click]}, headers=AS_WRITER).status_code == 200

        stopped = client.post("/experiments/split/stop", headers=AS_ADMIN)
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped" and not stopped.json()["served"]
        after = client.get(f"/recommendations/{users[0]}").json()
        assert after["experiment"] is None and after["arm"] is None and after["model_version"] == "1"
        assert client.post("/experiments/nope/stop", headers=AS_ADMIN).status_code == 404
        assert "recsys_exposures_logged" in client.get("/metrics").text
    # the lifespan's shutdown flushed the exposure queue: every shown item of both rounds is in the store
    store = open_store(store_url)
    exposures, clicks = EventStoreRecords(store).read(ExperimentStore().get("split"))
    assert len(exposures) == sum(len(r["items"]) for r in [*first.values(), *again.values()])
    assert set(exposures["model_version"]) == {"1", "2"} and exposures["latency_ms"].gt(0).all()
    assert not exposures["fallback"].any() and len(clicks) == 1
    attributed = attribution.attribute_clicks(exposures, clicks)
    assert attributed["status"].tolist() == [attribution.ATTRIBUTED] and attributed["arm"].iloc[0] == expected[0]
    report = build_online_report(ExperimentStore().get("split"), exposures, clicks, looks=2)
    assert report.analysis.arms[expected[0]].clicks == 1 and report.click_status["attributed"] == 1
    store.close()


def start_service(processes: Processes, name: str, port: int, root: Path) -> httpx.Client:
    """`recsys serve --registry-alias champion` (uvicorn) with the defaults under the test's $RECSYS_HOME: registry,
    event store and experiment store, the ones the asset reads."""
    processes.start(name, [sys.executable, "-m", "recsys_core.serving.serve", "--registry-alias", "champion", "--port",
                           str(port), "--providers", "cpu", "--reload-interval", "0.5", "--api-keys", str(keys_file(root))])  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_ready(client, lambda: name in processes.exited(), 90)
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(processes.log(name)) from error
    return client


@pytest.mark.slow
def test_simulated_traffic_through_the_real_service_survives_a_restart_and_gets_a_decision(
    exported: Path, tmp_path: Path, recsys_home: Path
) -> None:
    register(exported)
    processes = Processes(tmp_path, {**os.environ, "RECSYS_HOME": str(recsys_home)}, Path.cwd())
    port = free_port()
    try:
        client = start_service(processes, "first", port, tmp_path)
        created = client.put("/experiments/e2e", json={"arms": ARMS, "min_users_per_arm": 5}, headers=AS_ADMIN)
        assert created.status_code == 201, created.text
        simulated = SimulatedUsers(SyntheticConfig(n_users=N_USERS, n_items=N_ITEMS, n_ratings=300, seed=5))
        exposures, clicks, counters = simulate_http(client, simulated, rate=50, duration_s=3, seed=1)
        ServiceSink(client, WRITE).write(exposures, clicks)
        assert counters["errors"] == 0 and set(exposures["arm"]) == {"control", "treatment"} and len(clicks)
        client.close()
        processes.stop()  # SIGTERM: the lifespan flushes the exposure queue

        client = start_service(processes, "second", port, tmp_path)
        listed = client.get("/experiments", headers=AS_ADMIN).json()
        assert [(e["name"], e["status"], e["served"]) for e in listed] == [("e2e", "running", True)]
        arm_of = exposures.drop_duplicates("user_id").set_index("user_id")["arm"]
        for user in arm_of.index[:10]:
            assert client.get(f"/recommendations/{user}").json()["arm"] == arm_of[user]  # sticky across the restart

        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(experiments.name, ["e2e"])
            result = materialize([online_ab_report], partition_key="e2e", instance=instance,
                                 resources={"mlflow": MlflowResource()}, raise_on_error=False)  # fmt: skip
        value = result.output_for_node("online_ab_report")
        assert value["decision"] in ("promote", "rollback", "continue") and value["reasons"]
        logged, _ = EventStoreRecords(open_store()).read(ExperimentStore().get("e2e"))
        assert len(logged) >= len(exposures)  # everything the simulator saw before the restart, plus the checks above
        if value["decision"] != "continue":  # the asset stopped the experiment: the service follows within a poll
            wait_for(lambda: client.get(f"/recommendations/{arm_of.index[0]}").json()["experiment"] is None)
        client.close()
    finally:
        processes.stop()


def test_exposure_log_drops_and_counts_when_full_and_drains_on_close(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'events.sqlite'}")
    log = ExposureLog(store, max_queue=2)
    responses = [Exposure("e", "control", "1", f"r{i}", 7, [1, 2, 3], 1e9 + i, 5.0, False) for i in range(3)]
    assert [log.offer(exposure) for exposure in responses] == [True, True, False]  # not started: the queue fills up
    assert log.dropped == {"queue_full": 1, "store_error": 0}
    log.start()
    log.close()  # drains what was queued before it returns
    assert log.logged == 2 and store.count() == 2
    logged = exposures_frame(store.read())
    assert logged["request_id"].tolist() == ["r0"] * 3 + ["r1"] * 3 and logged["rank"].tolist() == [1, 2, 3] * 2
    assert 'recsys_exposures_dropped_total{reason="queue_full"} 1.0' in generate_latest(registry_of(log)).decode()


def registry_of(log: ExposureLog) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(log)
    return registry


def test_request_path_assigner_matches_the_vectorised_assignment() -> None:
    ids = np.concatenate([np.arange(0, 5000), np.random.default_rng(0).integers(0, 2**62, 5000)])
    for salt, shares in (("split", {"a": 0.5, "b": 0.5}), ("other", {"a": 0.2, "b": 0.3}), ("srm", {"a": 0.45, "b": 0.55})):
        assign = Assigner(salt, shares)
        assert [assign(int(u)) for u in ids] == assign_shares(ids, salt, shares).tolist()
