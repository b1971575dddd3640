"""The documented production instance (dagster.prod.yaml) against a real PostgreSQL server.

CI's .ci/run starts one and sets RECSYS_TEST_POSTGRES_URL; elsewhere these tests skip.
"""

import os
import shutil
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterInstance, DagsterRunStatus, load_assets_from_modules, materialize

from recsys_dagster.assets import ingestion, validation
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager

POSTGRES_URL = os.environ.get("RECSYS_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="RECSYS_TEST_POSTGRES_URL not set (.ci/run starts PostgreSQL)")
PROD_YAML = Path(__file__).resolve().parents[1] / "dagster.prod.yaml"


@pytest.fixture
def prod_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROD_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", POSTGRES_URL)
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance
        instance.wipe()


def test_prod_instance_stores_runs_and_events_in_postgres(prod_instance: DagsterInstance, tmp_path: Path) -> None:
    assert type(prod_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(prod_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(prod_instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    result = materialize(
        load_assets_from_modules([ingestion, validation]),
        selection=AssetSelection.all() - AssetSelection.assets("landed_ratings", "landed_events"),
        resources={"io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")), "data_source": DataSourceResource(synthetic_ratings=1_000)},
        run_config={"ops": {op: {"config": {"data_docs": False}} for op in ("validate_item_catalogue", "validate_rating_log")}},
        instance=prod_instance,
    )
    assert result.success
    stored = prod_instance.get_run_by_id(result.run_id)
    assert stored is not None and stored.status == DagsterRunStatus.SUCCESS
    assert prod_instance.get_latest_materialization_event(ingestion.raw_ratings.key) is not None

