"""Asset storage: DataFrames as Parquet, small records (model manifests, reports) as JSON. Nothing is pickled."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManagerFactory, InputContext, OutputContext, UPathIOManager
from upath import UPath

from recsys_core.paths import recsys_home

_SUFFIXES = (".parquet", ".json")


class ParquetJsonIOManager(UPathIOManager):
    """Stores each asset (and each partition) under `base_path/<asset key>[/<partition>]`.

    The suffix follows the value: a pandas DataFrame becomes `.parquet`, anything JSON-serialisable `.json`.
    A partitioned asset read whole by an unpartitioned one always arrives as {partition_key: value} (no partitions:
    empty), where UPathIOManager alone would hand over a bare value when exactly one partition exists.
    """

    extension = ""

    def load_input(self, context: InputContext) -> Any:
        value = super().load_input(context)
        if not (context.has_asset_key and context.has_asset_partitions) or context.has_partition_key:
            return value
        keys = context.asset_partition_keys
        if len(keys) == 1:
            return {keys[0]: value} if value is not None else {}
        return value if value is not None else {}

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        if isinstance(obj, pd.DataFrame):
            obj.to_parquet(path.with_suffix(".parquet"), index=False)
            return
        if is_dataclass(obj) and not isinstance(obj, type):
            obj = asdict(obj)
        path.with_suffix(".json").write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        parquet, as_json = path.with_suffix(".parquet"), path.with_suffix(".json")
        if parquet.exists():
            return pd.read_parquet(parquet)
        if as_json.exists():
            return json.loads(as_json.read_text())
        raise FileNotFoundError(f"no stored value for {context.asset_key.to_user_string()} at {path}.(parquet|json)")

    def path_exists(self, path: UPath) -> bool:
        return any(path.with_suffix(s).exists() for s in _SUFFIXES)


class RecsysIOManager(ConfigurableIOManagerFactory):
    """Project-local asset storage; point `base_dir` at shared storage in production."""

    base_dir: str = ""

    def create_io_manager(self, context) -> ParquetJsonIOManager:
        base = Path(self.base_dir) if self.base_dir else recsys_home() / "assets"
        base.mkdir(parents=True, exist_ok=True)
        return ParquetJsonIOManager(base_path=UPath(base))
