"""MLflow as a Dagster resource: tracking URI, experiment and registered model name from config."""

from __future__ import annotations

from dagster import ConfigurableResource

from recsys_core.tracking import MlflowSettings


class MlflowResource(ConfigurableResource):
    """Empty `tracking_uri` means a local SQLite store under $RECSYS_HOME (offline, no server)."""

    tracking_uri: str = ""
    experiment_name: str = "recsys"
    registered_model_name: str = "recsys-hybrid"
    ui_url: str = "http://127.0.0.1:5000"

    def settings(self) -> MlflowSettings:
        return MlflowSettings(
            tracking_uri=self.tracking_uri,
            experiment_name=self.experiment_name,
            registered_model_name=self.registered_model_name,
            ui_url=self.ui_url,
        )
