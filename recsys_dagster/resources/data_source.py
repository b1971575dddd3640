"""The data source as a Dagster resource: the embedded synthetic catalogue by default (offline)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from recsys_core.paths import recsys_home
from recsys_core.sources import DataSourceSpec


class DataSourceResource(ConfigurableResource):
    """`kind`: synthetic (default, offline) | movielens (a local folder, or downloaded and verified) | files."""

    kind: str = "synthetic"
    synthetic_ratings: int = 100_000
    synthetic_shape: str = "ml-100k"  # or "ml-25m": 162k users and 62k items at 25M ratings
    seed: int = 42
    movielens_format: str = "ml-100k"
    data_dir: str = ""
    ratings_path: str = ""
    items_path: str = ""
    landing_dir: str = ""  # where rating drops arrive; empty = $RECSYS_HOME/landing

    def landing_path(self) -> Path:
        return Path(self.landing_dir) if self.landing_dir else recsys_home() / "landing"

    def spec(self) -> DataSourceSpec:
        return DataSourceSpec(
            kind=self.kind,
            synthetic_ratings=self.synthetic_ratings,
            synthetic_shape=self.synthetic_shape,
            seed=self.seed,
            movielens_format=self.movielens_format,
            data_dir=self.data_dir,
            ratings_path=self.ratings_path,
            items_path=self.items_path,
        )
