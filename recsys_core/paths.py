"""Where recsys keeps its local state (MLflow store, caches, artefacts) when nobody says otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def recsys_home() -> Path:
    """`$RECSYS_HOME`, else `.recsys/` in the working directory: project-local, no server needed."""
    return Path(os.environ.get("RECSYS_HOME", ".recsys")).resolve()


def default_cache_dir() -> Path:
    return recsys_home() / "cache"
