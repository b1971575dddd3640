"""Jobs: named selections of the asset graph that schedules, sensors and people launch."""

from dagster import AssetSelection, define_asset_job

ingest_and_validate = define_asset_job(
    "ingest_and_validate",
    selection=AssetSelection.groups("ingestion", "validation"),
    description="Read the data source and split it into validated and rejected rows.",
)

full_pipeline = define_asset_job(
    "full_pipeline",
    selection=AssetSelection.all(),
    description="Every asset, from ingestion to the A/B report.",
)

JOBS = [ingest_and_validate, full_pipeline]
