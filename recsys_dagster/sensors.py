"""Sensors: new rating drops become partitions and runs; new data and new models trigger what follows."""

import json

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

from recsys_core.landing import list_landed_files
from recsys_dagster.assets.ingestion import rating_drops
from recsys_dagster.jobs import ab_evaluation, full_pipeline, ingest_landed_ratings
from recsys_dagster.resources.data_source import DataSourceResource

AB_REPORT = AssetKey("ab_report")
LANDED_RATINGS = AssetKey("landed_ratings")
UNFINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


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


@sensor(job=full_pipeline, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def retrain_on_new_data(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """Drops that landed since the last retrain are validated together with everything before them and the model is
    retrained once: while any drop's ingestion is still queued or running the burst is not over, so it waits, and
    then one run covers every drop (seven drops at once used to start seven retrains on a 2-core machine).

    The cursor is the storage id of the last landed materialisation a retrain was requested for.
    """
    after = int(context.cursor) if context.cursor and context.cursor.isdigit() else None
    landed = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=LANDED_RATINGS, after_storage_id=after), limit=10_000, ascending=True
    ).records
    if not landed:
        return SkipReason("no drop landed since the last retrain")
    busy = context.instance.get_run_records(RunsFilter(job_name=ingest_landed_ratings.name, statuses=UNFINISHED))
    if busy:
        return SkipReason(f"{len(busy)} landing ingestion run(s) unfinished: one retrain follows the whole burst")
    names = sorted({r.partition_key for r in landed if r.partition_key})
    trigger = names[0] if len(names) == 1 else f"{len(names)} drops: {', '.join(names[:5])}" + (", ..." if len(names) > 5 else "")
    last = landed[-1].storage_id
    return SensorResult(
        run_requests=[RunRequest(run_key=f"landed:{last}", tags={"recsys/trigger": f"landed_ratings:{trigger}"})],
        cursor=str(last),
    )



@asset_sensor(asset_key=AssetKey("onnx_model"), job=ab_evaluation, default_status=DefaultSensorStatus.RUNNING)
def ab_report_on_new_model(context: SensorEvaluationContext, asset_event: EventLogEntry) -> RunRequest | SkipReason:
    """Every new challenger gets an A/B report, unless the run that exported it already produces one."""
    planned = context.instance.get_records_for_run(asset_event.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    if any(r.event_log_entry.dagster_event.asset_key == AB_REPORT for r in planned.records if r.event_log_entry.dagster_event):
        return SkipReason(f"run {asset_event.run_id} exporting the model also produces its A/B report")
    return RunRequest(run_key=f"ab:{asset_event.run_id}", tags={"recsys/trigger": f"onnx_model:{asset_event.run_id}"})


SENSORS = [rating_drop_sensor, retrain_on_new_data, ab_report_on_new_model]
