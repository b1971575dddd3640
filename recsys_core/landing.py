"""The landing folder: new rating drops (CSV or Parquet in the canonical columns) arrive here as files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from recsys_core.ingestion import read_ratings_file

LANDING_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class LandedFile:
    name: str  # unique within the folder; the partition key
    size: int
    modified_ns: int

    @property
    def version(self) -> str:
        """Changes when the file is replaced, so a re-drop under the same name is seen as new."""
        return f"{self.name}@{self.modified_ns}:{self.size}"


def list_landed_files(folder: str | Path) -> list[LandedFile]:
    """Complete files in name order; names starting with '.' or '_' are still being written (rename when done)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in LANDING_SUFFIXES and not path.name.startswith((".", "_")):
            stat = path.stat()
            files.append(LandedFile(path.name, stat.st_size, stat.st_mtime_ns))
    return files


def read_landed_file(folder: str | Path, name: str) -> pd.DataFrame:
    """A drop as raw ratings (bad rows kept with reasons, like any other source)."""
    return read_ratings_file(Path(folder) / name, "canonical")
