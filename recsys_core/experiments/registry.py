"""The MLflow registry side of a decision: which version is champion, where its ONNX export is, moving the alias."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from recsys_core.experiments.offline import PROMOTE, Decision
from recsys_core.tracking import MlflowSettings


CHAMPION = "champion"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    serving_dir: str

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def serving_dir_of(settings: MlflowSettings, name: str, version: str) -> str:
    """The ONNX serving directory of a registered version: its `recsys.onnx_dir` tag when that folder still exists,
    else the version's artefacts downloaded (the export registers the whole directory as extra files)."""
    model_version = settings.client().get_model_version(name, version)
    tagged = model_version.tags.get("recsys.onnx_dir")
    if tagged and (Path(tagged) / "manifest.json").exists():
        return tagged
    uri = settings.resolved_tracking_uri()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", tracking_uri=uri, registry_uri=uri))
    manifests = sorted(local.rglob("manifest.json"))
    if not manifests:
        raise FileNotFoundError(f"{name} v{version}: no serving directory (no manifest.json) in its artefacts at {local}")
    return str(manifests[0].parent)


def current_champion(settings: MlflowSettings, name: str) -> RegisteredModel | None:
    """The version behind alias `champion`, or None when no model was ever promoted."""
    try:
        version = settings.client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return RegisteredModel(name, str(version.version), serving_dir_of(settings, name, str(version.version)))


def apply_decision(settings: MlflowSettings, challenger: RegisteredModel, decision: Decision) -> bool:
    """Moves alias `champion` to the challenger on "promote" (never when it is worse beyond tolerance); tags the
    version with the decision either way. Returns whether the alias moved."""
    client = settings.client()
    client.set_model_version_tag(challenger.name, challenger.version, "recsys.ab_decision", decision.action)
    if decision.action != PROMOTE or decision.worse_beyond_tolerance:
        return False
    client.set_registered_model_alias(challenger.name, CHAMPION, challenger.version)
    return True


def resolve_ref(settings: MlflowSettings, name: str, ref: str) -> str:
    """The version behind an experiment arm's `alias:NAME` or `version:N`."""
    kind, _, value = ref.partition(":")
    if kind == "version":
        return str(settings.client().get_model_version(name, value).version)
    return str(settings.client().get_model_version_by_alias(name, value).version)


def promote_version(settings: MlflowSettings, name: str, version: str, tag: str) -> None:
    """Moves alias `champion` to `version` and tags it with why."""
    client = settings.client()
    client.set_model_version_tag(name, version, "recsys.online_ab_decision", tag)
    client.set_registered_model_alias(name, CHAMPION, version)
