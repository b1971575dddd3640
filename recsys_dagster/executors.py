"""The executor chosen per deployment from $RECSYS_EXECUTOR, as resources are from $RECSYS_DEPLOYMENT.

`multiprocess` (the default, Dagster's own) runs each step in a child process on this machine; `celery` submits each step to
Celery workers through Redis (`celery.yaml`, shared with `dagster-celery worker start`). The assets, jobs and
resources do not change: only where the steps run.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from dagster import ExecutorDefinition, multi_or_in_process_executor

CELERY_YAML = Path(__file__).resolve().parents[1] / "celery.yaml"


def celery_config(path: Path = CELERY_YAML) -> dict:
    """The `execution.config` block of the Celery YAML, the one `dagster-celery worker start -y` reads."""
    return yaml.safe_load(path.read_text())["execution"]["config"]


def executor_for(name: str | None = None) -> ExecutorDefinition:
    name = name or os.environ.get("RECSYS_EXECUTOR", "multiprocess")
    if name == "multiprocess":
        return multi_or_in_process_executor
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_config(), name="recsys_celery")
    raise ValueError(f"RECSYS_EXECUTOR={name!r}: expected 'multiprocess' or 'celery'")
