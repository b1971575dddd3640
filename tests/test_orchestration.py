"""Sensors and schedules on a temp landing folder, and landed drops flowing into validation."""

import json
import os
from pathlib import Path

import pandas as pd
from dagster import (
    AssetSelection,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    load_assets_from_modules,
    materialize,
)

from recsys_dagster.assets import ingestion, validation
from recsys_dagster.jobs import nightly_retrain
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.sensors import rating_drop_sensor, retrain_on_new_data

HEADER = "user_id,item_id,rating,timestamp\n"
UNPARTITIONED = AssetSelection.all() - AssetSelection.assets("landed_ratings", "landed_events")


def evaluate(instance: DagsterInstance, landing: Path, cursor: str | None) -> SensorResult | SkipReason:
    context = build_sensor_context(instance=instance, cursor=cursor, resources={"data_source": DataSourceResource(landing_dir=str(landing))})
    result = rating_drop_sensor(context)
    if isinstance(result, SensorResult):
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_each_file_once_idempotent_and_corrupt_file_does_not_block(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "drop-001.csv").write_text(HEADER + "1,1,4,881250949\n")
    (landing / "_drop-002.csv").write_text(HEADER)  # still being written: ignored
    with DagsterInstance.ephemeral() as instance:
        first = evaluate(instance, landing, None)
        assert [r.partition_key for r in first.run_requests] == ["drop-001.csv"]
        assert instance.get_dynamic_partitions("rating_drops") == ["drop-001.csv"]

        again = evaluate(instance, landing, first.cursor)  # same file, next tick or restarted daemon
        assert isinstance(again, SkipReason)

        (landing / "drop-002-corrupt.csv").write_bytes(b"\xff\xfe garbage")
        (landing / "drop-003.parquet").write_bytes(b"")
        (landing / "drop-004.csv").write_text(HEADER + "2,1,5,881250950\n")
        later = evaluate(instance, landing, first.cursor)
        assert [r.partition_key for r in later.run_requests] == ["drop-002-corrupt.csv", "drop-003.parquet", "drop-004.csv"]
        assert len(json.loads(later.cursor)) == 4
        # A run key repeats the file version: the daemon never launches the same drop twice.
        assert len({r.run_key for r in [*first.run_requests, *later.run_requests]}) == 4

        os.utime(landing / "drop-001.csv", ns=(1, 10**18))  # replaced under the same name
        replaced = evaluate(instance, landing, later.cursor)
        assert [r.partition_key for r in replaced.run_requests] == ["drop-001.csv"]
        assert instance.get_dynamic_partitions("rating_drops").count("drop-001.csv") == 1


def test_landed_drop_triggers_retraining_once(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "drop.csv").write_text(HEADER + "1,1,4,881250949\n")
    resources = {"io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")), "data_source": DataSourceResource(landing_dir=str(landing))}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("rating_drops", ["drop.csv"])
        nothing_yet = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance))
        assert not nothing_yet.run_requests
        materialize([ingestion.landed_ratings], partition_key="drop.csv", resources=resources, instance=instance)
        tick = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance))
        assert [r.tags["recsys/trigger"] for r in tick.run_requests] == ["landed_ratings:drop.csv"]
        assert retrain_on_new_data.job_name == "full_pipeline"
        again = retrain_on_new_data.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
        assert not again.run_requests


def test_nightly_schedule_runs_the_full_pipeline() -> None:
    assert nightly_retrain.cron_schedule == "0 3 * * *" and nightly_retrain.execution_timezone == "UTC"
    request = nightly_retrain.evaluate_tick(build_schedule_context()).run_requests
    assert len(request) == 1 and nightly_retrain.job_name == "full_pipeline"


def test_landed_drops_are_validated_with_the_source_and_bad_drops_skipped(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "good.csv").write_text(HEADER + "900001,1,5,1700000000\n900002,2,4,1700000001\n900003,999999,4,1700000002\n")
    (landing / "broken.csv").write_text("")  # unreadable: its partition fails, later validation goes on
    resources = {
        "io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")),
        "data_source": DataSourceResource(synthetic_ratings=2_000, landing_dir=str(landing)),
    }
    assets = load_assets_from_modules([ingestion, validation])
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("rating_drops", ["good.csv"])
        assert materialize([ingestion.landed_ratings], partition_key="good.csv", resources=resources, instance=instance).success
        run_config = {"ops": {op: {"config": {"data_docs": False}} for op in ("validate_item_catalogue", "validate_rating_log")}}
        one_drop = materialize(assets, selection=UNPARTITIONED, resources=resources, instance=instance, run_config=run_config)
        assert 900001 in set(one_drop.output_for_node("validate_rating_log", "validated_ratings")["user_id"])
        instance.add_dynamic_partitions("rating_drops", ["broken.csv"])
        broken = materialize([ingestion.landed_ratings], partition_key="broken.csv", resources=resources, instance=instance, raise_on_error=False)
        assert not broken.success
        result = materialize(assets, selection=UNPARTITIONED, resources=resources, instance=instance, run_config=run_config)
        valid = result.output_for_node("validate_rating_log", "validated_ratings")
        rejected = result.output_for_node("validate_rating_log", "rejected_ratings")
        raw = result.output_for_node("raw_ratings")
    assert {900001, 900002} <= set(valid["user_id"]) and 900003 not in set(valid["user_id"])
    assert len(valid) + len(rejected) == len(raw) + 3
    bad = rejected.set_index("user_id").loc[900003]
    assert bad["reason"] == "unknown item_id" and bad["source_file"] == "good.csv" and bad["source_line"] == 4
    assert pd.api.types.is_integer_dtype(valid["user_id"])


def ingestion_job():
    """Module-level so `reconstructable` can rebuild it; in-process, as pytest's test modules are not importable elsewhere."""
    from dagster import Definitions, define_asset_job, in_process_executor

    from recsys_dagster.jobs import LANDED

    ingest_and_validate = define_asset_job("ingest_and_validate", selection=AssetSelection.groups("ingestion", "validation") - LANDED)

    data_source = DataSourceResource(kind="files", ratings_path=os.environ["TEST_RATINGS"], items_path=os.environ["TEST_ITEMS"])
    defs = Definitions(
        assets=[*load_assets_from_modules([ingestion], group_name="ingestion"),
                *load_assets_from_modules([validation], group_name="validation")],  # fmt: skip
        jobs=[ingest_and_validate],
        executor=in_process_executor,
        resources={"io_manager": RecsysIOManager(base_dir=os.environ["TEST_ASSETS"]), "data_source": data_source},
    )
    return defs.resolve_job_def("ingest_and_validate")


def test_failed_run_reexecutes_from_failure_without_redoing_finished_steps(tmp_path: Path, monkeypatch) -> None:
    from dagster import ReexecutionOptions, execute_job, reconstructable

    pd.DataFrame({"item_id": [1], "title": ["A"], "genres": ["Drama"]}).to_csv(tmp_path / "items.csv", index=False)
    (tmp_path / "ratings.csv").write_text(HEADER + "1,1,4,881250949\n2,1,4,881250950\n3,1,7,881250951\n")
    monkeypatch.setenv("TEST_RATINGS", str(tmp_path / "ratings.csv"))
    monkeypatch.setenv("TEST_ITEMS", str(tmp_path / "items.csv"))
    monkeypatch.setenv("TEST_ASSETS", str(tmp_path / "assets"))
    strict = {"ops": {op: {"config": {"data_docs": False}} for op in ("validate_item_catalogue", "validate_rating_log")}}
    lenient = {"ops": {**strict["ops"], "validate_rating_log": {"config": {"data_docs": False, "max_rejected_share": 0.5}}}}
    with DagsterInstance.ephemeral() as instance:
        failed = execute_job(reconstructable(ingestion_job), instance=instance, run_config=strict)
        assert not failed.success  # 1 of 3 ratings out of range: over the 1% threshold
        retried = execute_job(reconstructable(ingestion_job), instance=instance, run_config=lenient,
                              reexecution_options=ReexecutionOptions.from_failure(failed.run_id, instance))  # fmt: skip
        assert retried.success
        executed = {e.step_key for e in retried.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert executed == {"validate_rating_log"}


def test_freshness_check_flags_a_model_older_than_its_data() -> None:
    from dagster import AssetMaterialization, build_asset_check_context

    from recsys_dagster.checks import model_newer_than_data

    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(AssetMaterialization("validated_ratings"))
        instance.report_runless_asset_event(AssetMaterialization("trained_model"))
        assert model_newer_than_data(build_asset_check_context(instance=instance)).passed
        instance.report_runless_asset_event(AssetMaterialization("validated_ratings"))
        stale = model_newer_than_data(build_asset_check_context(instance=instance))
        assert not stale.passed and stale.metadata["model_age_behind_data_seconds"].value > 0


def test_new_onnx_model_triggers_an_ab_report(tmp_path: Path) -> None:
    from dagster import AssetMaterialization, asset

    from recsys_dagster.sensors import ab_report_on_new_model

    with DagsterInstance.ephemeral() as instance:
        assert not ab_report_on_new_model.evaluate_tick(build_sensor_context(instance=instance)).run_requests
        instance.report_runless_asset_event(AssetMaterialization("onnx_model"))
        tick = ab_report_on_new_model.evaluate_tick(build_sensor_context(instance=instance))
        assert len(tick.run_requests) == 1 and ab_report_on_new_model.job_name == "ab_evaluation"

        @asset(name="onnx_model")
        def exported() -> int:
            return 1

        @asset(deps=[exported])
        def ab_report() -> int:
            return 1

        materialize([exported, ab_report], instance=instance, resources={"io_manager": RecsysIOManager(base_dir=str(tmp_path))})
        same_run = ab_report_on_new_model.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
        assert not same_run.run_requests and "also produces its A/B report" in same_run.skip_message
