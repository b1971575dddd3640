"""End to end: a real dagster-webserver and dagster-daemon on 127.0.0.1, driven through the GraphQL API."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance, DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# Small enough for CI's 2 cores (runs the sensors launch use it too); every stage still runs for real.
SYNTHETIC_RATINGS = "4000"

LOCATION_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename } } } } }
"""

ASSET_METADATA_QUERY = """
query ($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Deployment:
    client: DagsterGraphQLClient
    url: str
    home: Path
    landing: Path

    def query(self, query: str, variables: dict) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        return response.json()["data"]

    def wait(self, run_id: str, timeout: float = 900) -> DagsterRunStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.client.get_run_status(run_id)
            if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still {status} after {timeout}s")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("e2e")
    home, recsys_home, landing = root / "dagster_home", root / "recsys_home", root / "recsys_home" / "landing"
    home.mkdir()
    landing.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    DagsterInstance.from_config(str(home)).dispose()  # create the SQLite schemas once: two processes racing to do it fail
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_HOME": str(recsys_home), "HF_HUB_OFFLINE": "1",
           "RECSYS_SYNTHETIC_RATINGS": SYNTHETIC_RATINGS}
    port = free_port()
    logs = [(root / "webserver.log").open("w"), (root / "daemon.log").open("w")]
    processes = [
        subprocess.Popen([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                         cwd=REPO, env=env, stdout=logs[0], stderr=subprocess.STDOUT),
        subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                         cwd=REPO, env=env, stdout=logs[1], stderr=subprocess.STDOUT),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deployment = Deployment(DagsterGraphQLClient("127.0.0.1", port_number=port), url, home, landing)
        deadline = time.monotonic() + 300
        while not code_location_loaded(deployment):
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise RuntimeError(f"webserver did not start: {(root / 'webserver.log').read_text()[-3000:]}")
            time.sleep(2)
        yield deployment
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def code_location_loaded(deployment: Deployment) -> bool:
    try:
        entries = deployment.query(LOCATION_QUERY, {})["workspaceOrError"]["locationEntries"]
    except requests.RequestException:
        return False
    for entry in entries:
        if entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]["__typename"] != "RepositoryLocation":
            raise RuntimeError(f"code location {entry['name']} failed to load: {entry['locationOrLoadError']}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def latest_materialization(deployment: Deployment, asset: str) -> tuple[str, dict] | None:
    """(run id, integer metadata) of the asset's latest materialisation, read back through GraphQL."""
    data = deployment.query(ASSET_METADATA_QUERY, {"key": {"path": [asset]}})
    materializations = data["assetOrError"].get("assetMaterializations") or []
    if not materializations:
        return None
    latest = materializations[0]
    return latest["runId"], {e["label"]: e.get("intValue") for e in latest["metadataEntries"]}


def latest_metadata(deployment: Deployment, asset: str) -> dict:
    found = latest_materialization(deployment, asset)
    assert found, f"{asset} was never materialised"
    return found[1]


def test_full_pipeline_through_graphql(deployment: Deployment) -> None:
    run_id = deployment.client.submit_job_execution("full_pipeline")
    assert deployment.wait(run_id) == DagsterRunStatus.SUCCESS
    validated = latest_metadata(deployment, "validated_ratings")
    raw = latest_metadata(deployment, "raw_ratings")
    assert validated["rows"] + validated["rejected_rows"] == raw["rows"] > 3_000
    for asset in ("item_text_features", "trained_model", "onnx_model", "offline_metrics", "ab_report"):
        assert latest_materialization(deployment, asset)[0] == run_id, asset


def test_dropped_file_flows_through_sensors_without_further_action(deployment: Deployment) -> None:
    """Acceptance: a drop leads, with no further action, to a validated partition, a retrained model, its ONNX
    export and an A/B report, through the drop sensor and the retrain sensor run by the daemon."""
    previous_run = latest_materialization(deployment, "ab_report")[0]
    before = latest_metadata(deployment, "validated_ratings")["rows"]
    drop = "user_id,item_id,rating,timestamp\n" + "".join(f"{900000 + u},{i},4,1700000000\n" for u in range(5) for i in (1, 2, 3))
    (deployment.landing / "_drop-001.csv").write_text(drop)
    (deployment.landing / "_drop-001.csv").rename(deployment.landing / "drop-001.csv")  # atomic: the sensor sees it whole
    deadline = time.monotonic() + 900
    while (latest := latest_materialization(deployment, "ab_report")[0]) == previous_run:
        assert time.monotonic() < deadline, "no A/B report followed the drop"
        time.sleep(5)
    assert latest_materialization(deployment, "landed_ratings") is not None
    for asset in ("validated_ratings", "trained_model", "onnx_model", "ab_report"):
        assert latest_materialization(deployment, asset)[0] == latest, asset
    assert latest_metadata(deployment, "validated_ratings")["rows"] == before + 15
