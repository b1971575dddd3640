"""Sensors: new rating drops become partitions and runs; new data and new models trigger what follows."""

import json
import time

from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterRunStatus,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    sensor,
)

from recsys_core.events.feedback import closed_windows
from recsys_core.landing import list_landed_files
from recsys_core.events import open_store
from recsys_core.privacy import Tombstones
from recsys_dagster.assets.ingestion import event_windows, rating_drops
from recsys_dagster.jobs import ab_evaluation, full_pipeline, ingest_landed_events, ingest_landed_ratings
from recsys_dagster.resources.data_source import DataSourceResource

AB_REPORT = AssetKey("ab_report")
UNFINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
WINDOW_GRACE_S = 60.0  # a window is landed this long after it closes: no append in flight can still join it


@sensor(job=ingest_landed_ratings, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def rating_drop_sensor(context: SensorEvaluationContext, data_source: DataSourceResource) -> SensorResult | SkipReason:
    """Each new (or replaced) file in the landing folder becomes a `rating_drops` partition and one ingestion run.

    The cursor holds the versions of the files now in the folder (so it grows with the folder, not with its history),
    and run keys repeat them, so a restarted daemon launches nothing twice.
    """
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    present = list_landed_files(data_source.landing_path())
    new = [f for f in present if f.version not in seen]
    cursor = json.dumps(sorted(f.version for f in present))
    if not new and cursor == (context.cursor or "[]"):
        return SkipReason(f"no new files in {data_source.landing_path()}")
    known = set(context.instance.get_dynamic_partitions(rating_drops.name))
    added = sorted({f.name for f in new} - known)
    return SensorResult(
        run_requests=[RunRequest(run_key=f.version, partition_key=f.name) for f in new],
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(rating_drops.name, added)] if added else [],
        cursor=cursor, skip_reason=None if new else f"no new files in {data_source.landing_path()} (some were removed)",
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


def _retrain_after_burst(asset_key: str, ingest_job: str, name: str, noun: str):  # noqa: ANN202 - a sensor
    @sensor(name=name, job=full_pipeline, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
    def retrain(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        """Partitions of `asset_key` landed since the last retrain are validated together with everything before them
        and the model is retrained once: while any of their ingestion runs is still queued or running the burst is
        not over, so it waits, and then one run covers them all (seven drops at once used to start seven retrains on
        a 2-core machine).

        The cursor is the storage id of the last landed materialisation a retrain was requested for.
        """
        after = int(context.cursor) if context.cursor and context.cursor.isdigit() else None
        landed = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset_key), after_storage_id=after), limit=10_000, ascending=True
        ).records
        if not landed:
            return SkipReason(f"no {asset_key} partition landed since the last retrain")
        busy = context.instance.get_run_records(RunsFilter(job_name=ingest_job, statuses=UNFINISHED))
        if busy:
            return SkipReason(f"{len(busy)} {ingest_job} run(s) unfinished: one retrain follows the whole burst")
        names = sorted({r.partition_key for r in landed if r.partition_key})
        trigger = names[0] if len(names) == 1 else f"{len(names)} {noun}: {', '.join(names[:5])}" + (", ..." if len(names) > 5 else "")
        last = landed[-1].storage_id
        return SensorResult(
            run_requests=[RunRequest(run_key=f"landed:{last}", tags={"recsys/trigger": f"{asset_key}:{trigger}"})],
            cursor=str(last),
        )

    return retrain


retrain_on_new_data = _retrain_after_burst("landed_ratings", ingest_landed_ratings.name, "retrain_on_new_data", "drops")
retrain_on_new_events = _retrain_after_burst("landed_events", ingest_landed_events.name, "retrain_on_new_events", "windows")


@sensor(job=full_pipeline, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def retrain_on_forget(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """A forgotten user (`recsys forget-user`, `DELETE /admin/users/{id}`) leaves validated_ratings, the quarantine,
    the splits and the model at the next run: request it now rather than at 03:00. The cursor is the last audit
    record a run was requested for; several forgets between ticks share one run."""
    after = int(context.cursor) if context.cursor and context.cursor.isdigit() else 0
    new = [record for record in Tombstones().audit() if record.seq > after]
    if not new:
        return SkipReason("no user forgotten since the last retrain")
    last = new[-1].seq
    users = sorted({record.user_id for record in new})
    return SensorResult(
        run_requests=[RunRequest(run_key=f"forget:{last}", tags={"recsys/trigger": f"forget-user:{len(users)} user(s)"})],
        cursor=str(last),
    )


@asset_sensor(asset_key=AssetKey("onnx_model"), job=ab_evaluation, default_status=DefaultSensorStatus.RUNNING)
def ab_report_on_new_model(context: SensorEvaluationContext, asset_event: EventLogEntry) -> RunRequest | SkipReason:
    """Every new challenger gets an A/B report, unless the run that exported it already produces one."""
    planned = context.instance.get_records_for_run(asset_event.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    if any(r.event_log_entry.dagster_event.asset_key == AB_REPORT for r in planned.records if r.event_log_entry.dagster_event):
        return SkipReason(f"run {asset_event.run_id} exporting the model also produces its A/B report")
    return RunRequest(run_key=f"ab:{asset_event.run_id}", tags={"recsys/trigger": f"onnx_model:{asset_event.run_id}"})


SENSORS = [rating_drop_sensor, event_window_sensor, retrain_on_new_data, retrain_on_new_events, retrain_on_forget,
           ab_report_on_new_model]
