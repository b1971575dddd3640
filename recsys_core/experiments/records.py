"""Where an experiment's exposure and click records come from: a small interface, so the online report does not care
whether they were written by `recsys simulate` (Parquet files) or, once it exists, read from the event store."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pandas as pd

from recsys_core.experiments.attribution import CLICK_COLUMNS, EXPOSURE_COLUMNS, REQUEST_ID, TIMESTAMP, require_columns
from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.paths import recsys_home


class ExperimentRecords(Protocol):
    def read(self, experiment: ExperimentDefinition) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(exposures, clicks) since the experiment started, in `attribution`'s columns."""
        ...


class ParquetRecords:
    """`<directory>/<experiment name>/exposures.parquet` and `clicks.parquet`, as `recsys simulate --out` writes them."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else recsys_home() / "experiments" / "records"

    def read(self, experiment: ExperimentDefinition) -> tuple[pd.DataFrame, pd.DataFrame]:
        folder = self.directory / experiment.name
        frames = []
        for name, columns in (("exposures", EXPOSURE_COLUMNS), ("clicks", CLICK_COLUMNS)):
            path = folder / f"{name}.parquet"
            if not path.exists():
                raise FileNotFoundError(f"experiment {experiment.name!r}: no {name} at {path}")
            frame = pd.read_parquet(path)
            require_columns(frame, columns, str(path))
            frames.append(frame[frame[TIMESTAMP] >= experiment.start_time].reset_index(drop=True))
        exposures, clicks = frames
        if REQUEST_ID not in clicks.columns:
            clicks[REQUEST_ID] = None
        return exposures, clicks
