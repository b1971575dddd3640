"""Child process of `recsys bench pipeline`: materialises `full_pipeline` in the DAGSTER_HOME / RECSYS_HOME of its
environment with every step in its own process, one at a time, so each step's peak memory is its own; then (or after
the parent stopped a run at its time limit) dumps what the event log knows about each step as JSON.

    python -m recsys_dagster.bench.pipeline_run run
    python -m recsys_dagster.bench.pipeline_run read OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dagster import DagsterEventType, DagsterInstance, JobDefinition, MetadataValue, execute_job, reconstructable

JOB = "full_pipeline"
ONE_STEP_AT_A_TIME = {"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}}


def full_pipeline() -> JobDefinition:
    from recsys_dagster.definitions import defs

    return defs.resolve_job_def(JOB)


def _plain(value: MetadataValue) -> Any:
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, (int, float, str, bool)) or raw is None else None


def run_job() -> int:
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(full_pipeline), instance=instance, run_config=ONE_STEP_AT_A_TIME)
        return 0 if result.success else 1


def read_steps(out: Path) -> None:
    """Per step: pid, start / end time, status and the assets it materialised (scalar metadata); per asset its parents."""
    from recsys_dagster.definitions import defs

    graph = defs.resolve_asset_graph()
    parents = {key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys) for key in graph.get_all_asset_keys()}
    steps: dict[str, dict[str, Any]] = {}
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            out.write_text(json.dumps({"run_id": None, "status": "not started", "steps": {}, "parents": parents}))
            return
        run = runs[0]
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            step = steps.setdefault(event.step_key, {"assets": {}, "status": "started"})
            if event.event_type == DagsterEventType.STEP_START:
                step.update(pid=event.pid, start=entry.timestamp)
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                step.update(end=entry.timestamp, status="success" if event.event_type == DagsterEventType.STEP_SUCCESS else "failure")
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                materialization = entry.asset_materialization
                step["assets"][materialization.asset_key.to_user_string()] = {
                    name: _plain(value) for name, value in materialization.metadata.items() if _plain(value) is not None
                }
        out.write_text(json.dumps({"run_id": run.run_id, "status": run.status.value, "steps": steps, "parents": parents}, default=str))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        sys.exit(run_job())
    read_steps(Path(sys.argv[2]))
