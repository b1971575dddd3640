"""Ingestion and validation assets through the real Dagster machinery, on temp storage."""

from pathlib import Path

import pandas as pd
from dagster import AssetKey, AssetSelection, DagsterInstance, asset, load_assets_from_modules, materialize

from recsys_dagster.assets import ingestion, validation
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager

FOUNDATION = load_assets_from_modules([ingestion, validation])


@asset
def downstream_of_ratings(validated_ratings: pd.DataFrame) -> int:
    """Stands in for training: must not run when a blocking check on its input fails."""
    return len(validated_ratings)


def run(tmp_path: Path, data_source: DataSourceResource, instance: DagsterInstance, data_docs: bool = False):
    return materialize(
        [*FOUNDATION, downstream_of_ratings],
        selection=AssetSelection.all() - AssetSelection.assets("landed_ratings", "landed_events"),
        resources={"io_manager": RecsysIOManager(base_dir=str(tmp_path / "assets")), "data_source": data_source},
        run_config={"ops": {name: {"config": {"data_docs": data_docs}} for name in ("validate_item_catalogue", "validate_rating_log")}},
        instance=instance,
        raise_on_error=False,
    )


def check_results(result) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def test_synthetic_source_materialises_and_checks_pass(tmp_path: Path) -> None:
    with DagsterInstance.ephemeral() as instance:
        result = run(tmp_path, DataSourceResource(synthetic_ratings=5_000), instance, data_docs=True)
        assert result.success
        raw = result.output_for_node("raw_ratings")
        valid = result.output_for_node("validate_rating_log", "validated_ratings")
        rejected = result.output_for_node("validate_rating_log", "rejected_ratings")
        assert len(valid) + len(rejected) == len(raw) > 4_000
        assert all(check_results(result).values()) and len(check_results(result)) == 4
        materialization = instance.get_latest_materialization_event(AssetKey("validated_ratings")).asset_materialization
        assert materialization.metadata["rejected_rows"].value == 0
        assert materialization.metadata["data_docs"].value.endswith("index.html")
        assert result.output_for_node("downstream_of_ratings") == len(valid)
    assert (tmp_path / "assets" / "validated_ratings.parquet").exists()


def test_corrupted_input_trips_the_blocking_check(tmp_path: Path) -> None:
    items = pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"], "genres": ["Drama", "Comedy"]})
    items.to_csv(tmp_path / "items.csv", index=False)
    good = "\n".join(f"{u},1,4,881250949" for u in range(1, 91))
    bad = "\n".join(f"{u},1,not-a-rating,881250949" for u in range(91, 101))
    (tmp_path / "ratings.csv").write_text(f"user_id,item_id,rating,timestamp\n{good}\n{bad}\n")
    source = DataSourceResource(kind="files", ratings_path=str(tmp_path / "ratings.csv"), items_path=str(tmp_path / "items.csv"))
    with DagsterInstance.ephemeral() as instance:
        result = run(tmp_path, source, instance)
        assert not result.success
        checks = check_results(result)
        assert checks[("validated_ratings", "rejected_share_below_threshold")] is False
        assert checks[("validated_ratings", "schema_matches")] is True
        rejected = pd.read_parquet(tmp_path / "assets" / "rejected_ratings.parquet")
        assert len(rejected) == 10 and rejected["source_line"].tolist() == list(range(92, 102))
        assert rejected["reason"].str.contains("not a number").all()
        assert instance.get_latest_materialization_event(AssetKey("downstream_of_ratings")) is None
        assert instance.get_latest_materialization_event(AssetKey("validated_items")) is not None
