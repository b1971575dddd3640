"""Where an experiment's exposure and click records come from: a small interface, so the online report does not care
whether they were written by `recsys simulate` (Parquet files) or logged by the service into the event store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import pandas as pd

from recsys_core.experiments.attribution import CLICK_COLUMNS, EXPOSURE_COLUMNS, REQUEST_ID, TIMESTAMP, require_columns
from recsys_core.events.store import EventStore
from recsys_core.experiments.definitions import ExperimentDefinition
from recsys_core.experiments.exposures import EXPERIMENT, clicks_frame, exposures_frame
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


class EventStoreRecords:
    """Exposures the service logged for the experiment and every click, received since the experiment started (a click
    names no experiment: attribution decides which exposure, if any, earned it)."""

    def __init__(self, store: EventStore, click_types: tuple[str, ...] = ("click",)) -> None:
        self.store, self.click_types = store, click_types

    def read(self, experiment: ExperimentDefinition) -> tuple[pd.DataFrame, pd.DataFrame]:
        events = self.store.read_received(experiment.start_time, time.time() + 1.0)
        exposures = exposures_frame(events)
        exposures = exposures[exposures[EXPERIMENT] == experiment.name].reset_index(drop=True)
        return exposures, clicks_frame(events, self.click_types)
