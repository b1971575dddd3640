"""Resources chosen per deployment from $RECSYS_DEPLOYMENT. `local` (the default) needs no network and no server."""

from __future__ import annotations

import os
from typing import Any

from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.data_source import DataSourceResource
from recsys_dagster.resources.io_manager import RecsysIOManager
from recsys_dagster.resources.text_encoder import TextEncoderResource
from recsys_dagster.resources.tracking import MlflowResource


def local_resources() -> dict[str, Any]:
    return {
        "io_manager": RecsysIOManager(),
        "data_source": DataSourceResource(synthetic_ratings=int(os.environ.get("RECSYS_SYNTHETIC_RATINGS", "100000")),
                                          synthetic_shape=os.environ.get("RECSYS_SYNTHETIC_SHAPE", "ml-100k")),
        "mlflow": MlflowResource(),
        "compute": ComputeResource(),
        "text_encoder": TextEncoderResource(),
    }


def resources_for(deployment: str | None = None) -> dict[str, Any]:
    """Same Definitions on a laptop and in production; only the resources differ."""
    deployment = deployment or os.environ.get("RECSYS_DEPLOYMENT", "local")
    if deployment == "local":
        return local_resources()
    if deployment == "prod":
        resources = local_resources()
        resources["io_manager"] = RecsysIOManager(base_dir=os.environ["RECSYS_ASSET_DIR"])
        resources["mlflow"] = MlflowResource(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        return resources
    raise ValueError(f"RECSYS_DEPLOYMENT={deployment!r}: expected 'local' or 'prod'")
