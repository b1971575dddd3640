"""Sensors: new rating drops become partitions and runs; new data and new models trigger what follows."""

import json
import time

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    DagsterEventType,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    sensor,
)

from recsys_core.events.feedback import closed_windows
from recsys_core.landing import list_landed_files
from recsys_core.events import open_store
from recsys_dagster.assets.ingestion import event_windows, rating_drops
from recsys_dagster.jobs import ab_evaluation, full_pipeline, ingest_landed_events, ingest_landed_ratings
from recsys_dagster.resources.data_source import DataSourceResource

AB_REPORT = AssetKey("ab_report")
WINDOW_GRACE_S = 60.0  # a window is landed this long after it closes: no append in flight can still join it


@sensor(job=ingest_landed_ratings, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def rating_drop_sensor(context: SensorEvaluationContext, data_source: DataSourceResource) -> SensorResult | SkipReason:
    """Each new (or replaced) file in the landing folder becomes a `rating_drops` partition and one ingestion run.

    The cursor holds the versions already seen, and run keys repeat them, so a restarted daemon launches nothing twice.
    """
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    new = [f for f in list_landed_files(data_source.landing_path()) if f.version not in seen]
    if not new:
        return SkipReason(f"no new files in {data_source.landing_path()}")
    known = set(context.instance.get_dynamic_partitions(rating_drops.name))
    added = sorted({f.name for f in new} - known)
    return SensorResult(
        run_requests=[RunRequest(run_key=f.version, partition_key=f.name) for f in new],
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(rating_drops.name, added)] if added else [],
        cursor=json.dumps(sorted(seen | {f.version for f in new})),
    )


@sensor(job=ingest_landed_events, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def event_window_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """Each closed window of server receive time that holds events becomes one `landed_events` run.

    Reads the store with its cursor (the last seq already assigned to a launched window): a restarted daemon resumes
    after it, and the run key (the window) launches a partition at most once, so every event lands exactly once.
    """
    store = open_store()  # $RECSYS_EVENT_STORE, else SQLite under $RECSYS_HOME: the store the service writes
    try:
        windows, after = closed_windows(store, int(context.cursor or 0), time.time(), WINDOW_GRACE_S)
    finally:
        store.close()
    if not windows:
        return SkipReason(f"no closed window with events after seq {context.cursor or 0}")
    known = set(context.instance.get_dynamic_partitions(event_windows.name))
    added = [key for key in windows if key not in known]
    return SensorResult(
        run_requests=[RunRequest(run_key=f"events:{key}", partition_key=key, tags={"recsys/events": str(n)}) for key, n in windows.items()],
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(event_windows.name, added)] if added else [],
        cursor=str(after),
    )


def _retrain_on(asset_key: str, name: str):  # noqa: ANN202 - a sensor definition
    @asset_sensor(asset_key=AssetKey(asset_key), name=name, job=full_pipeline,
                  default_status=DefaultSensorStatus.RUNNING)  # fmt: skip
    def retrain(context: SensorEvaluationContext, asset_event: EventLogEntry) -> RunRequest:
        """New landed data is validated together with everything before it, and the model retrained on the result."""
        partition = asset_event.dagster_event.partition if asset_event.dagster_event else None
        return RunRequest(run_key=f"landed:{asset_event.run_id}:{partition}", tags={"recsys/trigger": f"{asset_key}:{partition}"})

    return retrain


retrain_on_new_data = _retrain_on("landed_ratings", "retrain_on_new_data")
retrain_on_new_events = _retrain_on("landed_events", "retrain_on_new_events")


@asset_sensor(asset_key=AssetKey("onnx_model"), job=ab_evaluation, default_status=DefaultSensorStatus.RUNNING)
def ab_report_on_new_model(context: SensorEvaluationContext, asset_event: EventLogEntry) -> RunRequest | SkipReason:
    """Every new challenger gets an A/B report, unless the run that exported it already produces one."""
    planned = context.instance.get_records_for_run(asset_event.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    if any(r.event_log_entry.dagster_event.asset_key == AB_REPORT for r in planned.records if r.event_log_entry.dagster_event):
        return SkipReason(f"run {asset_event.run_id} exporting the model also produces its A/B report")
    return RunRequest(run_key=f"ab:{asset_event.run_id}", tags={"recsys/trigger": f"onnx_model:{asset_event.run_id}"})


SENSORS = [rating_drop_sensor, event_window_sensor, retrain_on_new_data, retrain_on_new_events, ab_report_on_new_model]
