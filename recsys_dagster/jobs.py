"""Jobs (named selections of the asset graph) and the schedule that retrains nightly."""

import os

from dagster import AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from recsys_dagster.checks import model_newer_than_data

LANDED_RATINGS = AssetSelection.assets("landed_ratings")
LANDED_EVENTS = AssetSelection.assets("landed_events")
LANDED = LANDED_RATINGS | LANDED_EVENTS  # partitioned: each partition is its own run
ONLINE = AssetSelection.groups("experiments")  # one partition per experiment, run by its own sensor
# Runs that retrain carry this tag; the instance runs at most one of them at a time (dagster.yaml).
RETRAIN_TAG = "recsys/retrain"

ingest_and_validate = define_asset_job(
    "ingest_and_validate",
    selection=(AssetSelection.groups("ingestion", "validation") - LANDED) | AssetSelection.checks(model_newer_than_data),
    description="Read the data source and split it into validated and rejected rows; flag a model older than the data.",
)

ingest_landed_ratings = define_asset_job(
    "ingest_landed_ratings",
    selection=LANDED_RATINGS,
    description="Read one rating drop from the landing folder (one partition per file).",
)

ingest_landed_events = define_asset_job(
    "ingest_landed_events",
    selection=LANDED_EVENTS,
    description="Land one closed window of live events from the event store (one hourly partition per window).",
)

full_pipeline = define_asset_job(
    "full_pipeline",
    selection=AssetSelection.all() - LANDED - ONLINE,
    description="Every asset, from ingestion to the A/B report (landed drops and event windows are read as they are).",
    tags={RETRAIN_TAG: "true"},
)

train_and_evaluate = define_asset_job(
    "train_and_evaluate",
    selection=AssetSelection.groups("split", "features", "training", "export", "evaluation", "ab"),
    description="Split, text features, model, ONNX export, offline metrics and the A/B report on the validated data.",
    tags={RETRAIN_TAG: "true"},
)

ab_evaluation = define_asset_job(
    "ab_evaluation",
    selection=AssetSelection.assets("ab_report"),
    description="Challenger vs champion for the latest exported model; moves the champion alias on promotion.",
)

nightly_retrain = ScheduleDefinition(
    name="nightly_retrain",
    job=full_pipeline,
    cron_schedule=os.environ.get("RECSYS_RETRAIN_CRON", "0 3 * * *"),
    execution_timezone=os.environ.get("RECSYS_TIMEZONE", "UTC"),
    default_status=DefaultScheduleStatus.RUNNING,
    description="Re-ingest, validate and retrain every night; the A/B report decides whether the new model is promoted.",
)

JOBS = [ingest_and_validate, ingest_landed_ratings, ingest_landed_events, train_and_evaluate, full_pipeline, ab_evaluation]
SCHEDULES = [nightly_retrain]
