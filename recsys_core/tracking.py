"""MLflow tracking and registry settings shared by training, export and evaluation.

Default store: a SQLite database and an artefact folder under $RECSYS_HOME, so runs, the registry and
`mlflow ui` work offline with no server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from recsys_core.paths import recsys_home


@dataclass(frozen=True)
class MlflowSettings:
    tracking_uri: str = ""
    experiment_name: str = "recsys"
    registered_model_name: str = "recsys-hybrid"
    ui_url: str = "http://127.0.0.1:5000"

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        home = recsys_home()
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'mlflow.db'}"

    def artifact_root(self) -> Path:
        return recsys_home() / "mlartifacts"

    def client(self) -> MlflowClient:
        uri = self.resolved_tracking_uri()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def activate(self) -> str:
        """Point the fluent `mlflow.*` API at this store and experiment; returns the experiment id."""
        uri = self.resolved_tracking_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            artifact_location = None
            if uri.startswith("sqlite:"):
                artifact_location = self.artifact_root().as_uri()
            experiment_id = client.create_experiment(self.experiment_name, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"
