"""Events into the pipeline: closed windows found by cursor, the sensor, landed events validated with the source
(quarantined ones naming window and seq), and landed events triggering the retrain path."""

import time
from pathlib import Path

from dagster import AssetSelection, DagsterInstance, SkipReason, build_sensor_context, load_assets_from_modules, materialize

from recsys_core.events import Event, open_store
from recsys_core.events.feedback import closed_windows, window_bounds, window_key
from recsys_dagster.assets import ingestion, validation
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.sensors import event_window_sensor, retrain_on_new_events

UNPARTITIONED = AssetSelection.all() - AssetSelection.assets("landed_ratings", "landed_events")


def click(n: int, user: int, item: int, type_: str = "click") -> Event:
    return Event(f"p{n}", user, item, type_, 1_700_000_000.0 + n, 4.0 if type_ == "rating" else None)


def test_closed_windows_follow_the_cursor_and_the_sensor_waits_for_the_window_to_close(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    monkeypatch.setenv("RECSYS_EVENT_STORE", url)  # the sensor reads the store the service writes
    store = open_store(url)
    stored = store.append([click(1, 7, 1), click(2, 8, 2, "impression")]).stored
    key = window_key(stored[0].received_at)
    start, end = window_bounds(key)
    assert start <= stored[0].received_at < end and end - start == 3600
    assert closed_windows(store, 0, time.time()) == ({}, 0)  # this hour is still open: nothing may land yet
    windows, cursor = closed_windows(store, 0, end + 61)
    assert windows == {key: 2} and cursor == stored[-1].seq
    assert closed_windows(store, cursor, end + 10**6) == ({}, cursor)  # a restarted consumer resumes after its cursor
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(instance=instance)
        assert isinstance(event_window_sensor(context), SkipReason)
    store.close()


def test_landed_events_are_validated_with_the_source_and_trigger_retraining(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    store = open_store(url)
    stored = store.append([click(1, 900_001, 1), click(2, 900_002, 2, "rating"), click(3, 900_003, 999_999),
                           click(4, 900_004, 1, "impression")]).stored  # fmt: skip
    store.close()
    windows = sorted({window_key(e.received_at) for e in stored})
    resources = {
        "io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")),
        "data_source": DataSourceResource(synthetic_ratings=2_000),
    }
    run_config = {"ops": {op: {"config": {"data_docs": False}} for op in ("validate_item_catalogue", "validate_rating_log")}}
    landing_config = {"ops": {"landed_events": {"config": {"url": url}}}}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("event_windows", windows)
        assert not retrain_on_new_events.evaluate_tick(build_sensor_context(instance=instance)).run_requests
        landed = [materialize([ingestion.landed_events], partition_key=w, resources=resources, instance=instance,
                              run_config=landing_config) for w in windows]  # fmt: skip
        tick = retrain_on_new_events.evaluate_tick(build_sensor_context(instance=instance))
        trigger = windows[0] if len(windows) == 1 else f"{len(windows)} windows: {', '.join(windows)}"
        assert [r.tags["recsys/trigger"] for r in tick.run_requests] == [f"landed_events:{trigger}"]
        assert retrain_on_new_events.job_name == "full_pipeline"
        metadata = landed[0].asset_materializations_for_node("landed_events")[0].metadata
        assert "| click" in metadata["events_per_type"].value
        assets = load_assets_from_modules([ingestion, validation])
        result = materialize(assets, selection=UNPARTITIONED, resources=resources, instance=instance, run_config=run_config)
        valid = result.output_for_node("validate_rating_log", "validated_ratings")
        rejected = result.output_for_node("validate_rating_log", "rejected_ratings")
        raw = result.output_for_node("raw_ratings")
    assert {900_001, 900_002} <= set(valid["user_id"]) and not {900_003, 900_004} & set(valid["user_id"])
    assert len(valid) + len(rejected) == len(raw) + 3  # three rated events; the impression is no rating
    bad = rejected.set_index("user_id").loc[900_003]
    assert bad["reason"] == "unknown item_id" and bad["source_file"] == f"events/{window_key(stored[2].received_at)}"
    assert bad["source_line"] == stored[2].seq


def test_cli_registers_bench_events_and_serve_event_options() -> None:
    from recsys_dagster.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench", "events", "--quick", "--backends", "sqlite"]).backends == "sqlite"
    args = parser.parse_args(["serve", "--model-dir", "x", "--event-store", "redis://127.0.0.1:6379/0", "--api-keys", "k.json"])
    assert (args.event_store, args.api_keys, args.max_batch) == ("redis://127.0.0.1:6379/0", "k.json", 1000)
