"""Ingestion: ratings and the item catalogue as read from the data source, bad rows included."""


import pandas as pd
from dagster import AssetExecutionContext, Backoff, DynamicPartitionsDefinition, MetadataValue, Output, RetryPolicy, asset

from recsys_core.ingestion import PARSE_ERROR
from recsys_core.landing import read_landed_file
from recsys_dagster.metadata import table
from recsys_dagster.resources.data_source import DataSourceResource

# Downloads can fail transiently; reading local files twice is harmless.
NETWORK_RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL)

# One partition per file dropped into the landing folder; the sensor adds them.
rating_drops = DynamicPartitionsDefinition(name="rating_drops")


def rating_summary(ratings: pd.DataFrame) -> dict[str, MetadataValue]:
    histogram = ratings["rating"].value_counts(dropna=False).sort_index().rename_axis("rating").reset_index(name="rows")
    timestamps = pd.to_datetime(ratings["timestamp"].dropna(), unit="s")
    return {
        "rows": MetadataValue.int(len(ratings)),
        "users": MetadataValue.int(int(ratings["user_id"].nunique())),
        "items": MetadataValue.int(int(ratings["item_id"].nunique())),
        "rating_histogram": table(histogram),
        "time_span": MetadataValue.text(f"{timestamps.min()} .. {timestamps.max()}" if len(timestamps) else "empty"),
        "preview": table(ratings, 10),
    }


@asset(retry_policy=NETWORK_RETRY, kinds={"pandas", "parquet"})
def raw_ratings(context: AssetExecutionContext, data_source: DataSourceResource) -> Output[pd.DataFrame]:
    """Every rating row of the source as read, unreadable rows kept with `parse_error` for validation to quarantine."""
    spec = data_source.spec()
    frame = spec.read_raw_ratings()
    context.log.info("read %d rating rows from %s", len(frame), spec.describe())
    metadata = rating_summary(frame)
    metadata["source"] = MetadataValue.text(spec.describe())
    metadata["unreadable_rows"] = MetadataValue.int(int(frame[PARSE_ERROR].notna().sum()))
    return Output(frame, metadata=metadata)


@asset(retry_policy=NETWORK_RETRY, kinds={"pandas", "parquet"})
def raw_items(context: AssetExecutionContext, data_source: DataSourceResource) -> Output[pd.DataFrame]:
    """The item catalogue (title, genres, year, text) as read, unreadable rows kept with `parse_error`."""
    spec = data_source.spec()
    frame = spec.read_raw_items()
    genres = frame["genres"].dropna().str.split("|").explode().value_counts().rename_axis("genre").reset_index(name="items")
    return Output(
        frame,
        metadata={
            "rows": MetadataValue.int(len(frame)),
            "source": MetadataValue.text(spec.describe()),
            "unreadable_rows": MetadataValue.int(int(frame[PARSE_ERROR].notna().sum())),
            "genres": table(genres),
            "preview": table(frame, 10),
        },
    )


@asset(partitions_def=rating_drops, kinds={"pandas", "parquet"})
def landed_ratings(context: AssetExecutionContext, data_source: DataSourceResource) -> Output[pd.DataFrame]:
    """One rating drop from the landing folder (canonical CSV or Parquet), appended to the source's ratings."""
    folder = data_source.landing_path()
    frame = read_landed_file(folder, context.partition_key)
    metadata = rating_summary(frame)
    metadata["file"] = MetadataValue.path(str(folder / context.partition_key))
    metadata["unreadable_rows"] = MetadataValue.int(int(frame[PARSE_ERROR].notna().sum()))
    return Output(frame, metadata=metadata)
