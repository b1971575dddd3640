"""Where the pipeline's data comes from: the embedded synthetic catalogue, a MovieLens release, or canonical files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recsys_core.download import fetch_movielens
from recsys_core.ingestion import LAYOUTS, PARSE_ERROR, SOURCE_LINE, read_ratings_file, read_items_file
from recsys_core.schema import RATING_COLUMNS
from recsys_core.synthetic import SyntheticConfig, generate_items, iter_synthetic_ratings

SOURCE_KINDS = ("synthetic", "movielens", "files")
# From this many synthetic ratings, generation uses every core (the same frame; spawning workers costs seconds).
PARALLEL_SYNTHETIC_RATINGS = 2_000_000


def raw_from_canonical(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A canonical frame made in memory, in the raw layout (every row read cleanly, line = position)."""
    raw = frame[columns].copy()
    raw[SOURCE_LINE] = range(1, len(raw) + 1)
    raw[PARSE_ERROR] = pd.Series(pd.NA, index=raw.index, dtype="string")
    return raw


@dataclass(frozen=True)
class DataSourceSpec:
    """`kind` picks the reader; the other fields matter only for that kind."""

    kind: str = "synthetic"
    synthetic_ratings: int = 100_000
    synthetic_shape: str = "ml-100k"  # the MovieLens release whose users/items proportions the synthetic data keeps
    seed: int = 42
    movielens_format: str = "ml-100k"
    data_dir: str = ""  # a local MovieLens folder; empty = download into the cache (movielens kind)
    ratings_path: str = ""  # canonical CSV/Parquet (files kind)
    items_path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"data source kind {self.kind!r}: expected one of {SOURCE_KINDS}")
        if self.kind == "movielens" and self.movielens_format not in LAYOUTS:
            raise ValueError(f"movielens_format {self.movielens_format!r}: expected one of {sorted(LAYOUTS)}")
        if self.kind == "files" and not (self.ratings_path and self.items_path):
            raise ValueError("data source kind 'files' needs ratings_path and items_path")

    def synthetic_config(self) -> SyntheticConfig:
        return SyntheticConfig.scaled(self.synthetic_ratings, seed=self.seed, shape=self.synthetic_shape)

    def movielens_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir else fetch_movielens(self.movielens_format)

    def describe(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic ({self.synthetic_ratings:,} ratings, {self.synthetic_shape} shape, seed {self.seed})"
        if self.kind == "movielens":
            return f"MovieLens {self.movielens_format} from {self.data_dir or 'the GroupLens download cache'}"
        return f"files {self.ratings_path}, {self.items_path}"

    def read_raw_ratings(self) -> pd.DataFrame:
        if self.kind == "synthetic":
            workers = (os.cpu_count() or 1) if self.synthetic_ratings >= PARALLEL_SYNTHETIC_RATINGS else 1
            frame = pd.concat(list(iter_synthetic_ratings(self.synthetic_config(), workers=workers)), ignore_index=True)
            return raw_from_canonical(frame, list(RATING_COLUMNS))
        if self.kind == "movielens":
            return read_ratings_file(self.movielens_dir() / LAYOUTS[self.movielens_format].ratings_file, self.movielens_format)
        return read_ratings_file(self.ratings_path, "canonical")

    def read_raw_items(self) -> pd.DataFrame:
        if self.kind == "synthetic":
            return raw_from_canonical(generate_items(self.synthetic_config()), ["item_id", "title", "genres", "year", "text"])
        if self.kind == "movielens":
            return read_items_file(self.movielens_dir() / LAYOUTS[self.movielens_format].items_file, self.movielens_format)
        return read_items_file(self.items_path, "canonical")
