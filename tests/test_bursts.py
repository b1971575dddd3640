"""Bounded work under bursts: the default instance queues runs with a small concurrency limit, a burst of landing
drops leads to one retrain, and the landing sensor's cursor holds only what is in the folder."""

import json
import os
import shutil
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, build_sensor_context, materialize
from dagster._core.run_coordinator import QueuedRunCoordinator

from recsys_dagster.assets import ingestion
from recsys_dagster.jobs import RETRAIN_TAG, full_pipeline
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.sensors import retrain_on_new_data
from tests.test_orchestration import HEADER, evaluate

REPO = Path(__file__).resolve().parents[1]


def test_default_instance_queues_runs_for_a_two_core_machine(tmp_path: Path) -> None:
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        queue = coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs <= 2
        assert [(limit["key"], limit["limit"]) for limit in queue.tag_concurrency_limits] == [(RETRAIN_TAG, 1)]
    assert full_pipeline.tags[RETRAIN_TAG] == "true"


def test_landing_cursor_holds_only_the_files_present(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    drop = landing / "drop.csv"
    drop.write_text(HEADER + "1,1,4,881250949\n")
    with DagsterInstance.ephemeral() as instance:
        cursor = evaluate(instance, landing, None).cursor
        for version in range(2, 30):  # the same file replaced again and again
            os.utime(drop, ns=(version, version * 10**9))
            result = evaluate(instance, landing, cursor)
            assert [r.partition_key for r in result.run_requests] == ["drop.csv"]
            cursor = result.cursor
        assert len(json.loads(cursor)) == 1
        drop.unlink()
        gone = evaluate(instance, landing, cursor)
        assert json.loads(gone.cursor) == [] and not gone.run_requests


def test_a_burst_of_drops_gives_one_retrain(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    names = [f"drop-{i}.csv" for i in range(7)]
    for i, name in enumerate(names):
        (landing / name).write_text(HEADER + f"{i + 1},1,4,881250949\n")
    resources = {"io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")), "data_source": DataSourceResource(landing_dir=str(landing))}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("rating_drops", names)
        for name in names[:6]:
            materialize([ingestion.landed_ratings], partition_key=name, resources=resources, instance=instance)
        pending = DagsterRun(job_name="ingest_landed_ratings", status=DagsterRunStatus.STARTED)
        instance.add_run(pending)  # the seventh drop's ingestion is still running: the burst is not over
        waiting = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance))
        assert not waiting.run_requests and "1 ingest_landed_ratings run(s) unfinished" in waiting.skip_message
        instance.delete_run(pending.run_id)
        materialize([ingestion.landed_ratings], partition_key=names[6], resources=resources, instance=instance)

        tick = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance, cursor=waiting.cursor))
        assert len(tick.run_requests) == 1
        assert tick.run_requests[0].tags["recsys/trigger"].startswith("landed_ratings:7 drops")
        again = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
        assert not again.run_requests
        materialize([ingestion.landed_ratings], partition_key=names[0], resources=resources, instance=instance)
        later = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
        assert len(later.run_requests) == 1 and later.run_requests[0].tags["recsys/trigger"] == f"landed_ratings:{names[0]}"
