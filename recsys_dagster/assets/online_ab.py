"""Online A/B: one partition per experiment, re-materialised by a sensor while it runs; applies the decision."""


import os
import time
from collections.abc import Iterator
from typing import Literal

import mlflow as mlflow_fluent
import pandas as pd
from dagster import (
    AddDynamicPartitionsRequest,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSelection,
    Config,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    MetadataValue,
    Output,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)
from pydantic import Field

from recsys_core.experiments import online, registry
from recsys_core.experiments.definitions import ExperimentStore
from recsys_core.experiments.online_report import arm_rows, build_online_report, render_online_html, render_online_markdown
from recsys_core.events import open_store
from recsys_core.experiments.records import EventStoreRecords, ExperimentRecords, ParquetRecords
from recsys_core.paths import recsys_home
from recsys_dagster.metadata import table
from recsys_dagster.resources.tracking import MlflowResource

experiments = DynamicPartitionsDefinition(name="experiments")
SRM_CHECK, GUARDRAIL_CHECK = "no_sample_ratio_mismatch", "guardrails_hold"


class OnlineABConfig(Config):
    records: Literal["event_store", "parquet"] = Field(
        "event_store", description="event_store: what the service logged (exposures) and received (clicks); parquet: "
        "files written by `recsys simulate --sink parquet`.")
    event_store: str = Field("", description="sqlite:///PATH or redis://HOST:PORT/DB; empty = $RECSYS_EVENT_STORE, "
                             "else SQLite at $RECSYS_HOME/events.sqlite (the service's default).")
    records_dir: str = Field("", description="Exposure/click Parquet per experiment; empty = $RECSYS_HOME/experiments/records.")
    looks: int = Field(20, description="Points in time of the cumulative-lift timeline.")
    catalogue_size: int = Field(0, description="Items in the catalogue, for the coverage guard-rail (0 = no coverage).")
    apply_decision: bool = Field(True, description="Move `champion` on promote; stop the experiment on promote/rollback.")


@asset(
    partitions_def=experiments,
    kinds={"mlflow", "html"},
    check_specs=[
        AssetCheckSpec(SRM_CHECK, asset="online_ab_report", blocking=True, description="Users per arm match the shares."),
        AssetCheckSpec(GUARDRAIL_CHECK, asset="online_ab_report", blocking=True, description="No guard-rail breached."),
    ],
)  # fmt: skip
def online_ab_report(context: AssetExecutionContext, config: OnlineABConfig, mlflow: MlflowResource) -> Iterator:
    """Per-arm CTR and clicks per user (CIs over users), SRM, mSPRT, guard-rails and the decision of one experiment."""
    started = time.perf_counter()
    store = ExperimentStore()  # $RECSYS_HOME/experiments.sqlite, the one the sensor and the CLI use
    definition = store.get(context.partition_key)
    exposures, clicks = _records(config).read(definition)
    report = build_online_report(definition, exposures, clicks, looks=config.looks, catalogue_size=config.catalogue_size or None)
    analysis, decision = report.analysis, report.analysis.decision

    out_dir = recsys_home() / "artifacts" / "online_ab_report" / definition.name / context.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "online_ab_report.html"
    html_path.write_text(render_online_html(report))
    markdown = render_online_markdown(report)

    settings = mlflow.settings()
    experiment_id = settings.activate()
    tags = {"recsys.stage": "online_ab", "recsys.experiment": definition.name, "recsys.decision": decision.action,
            "dagster.run_id": context.run_id}  # fmt: skip
    with mlflow_fluent.start_run(experiment_id=experiment_id, run_name=f"online_ab_report:{definition.name}", tags=tags) as run:
        for arm, stats in analysis.arms.items():
            mlflow_fluent.log_metrics({f"{arm}/users": stats.users, f"{arm}/ctr": stats.ctr.value,
                                       f"{arm}/clicks_per_user": stats.clicks_per_user.value})  # fmt: skip
        if analysis.sequential:
            mlflow_fluent.log_metrics({"difference": analysis.sequential.delta, "always_valid_p": analysis.sequential.p_value})
        mlflow_fluent.log_artifact(str(html_path), artifact_path="online_ab_report")
        mlflow_fluent.log_text(markdown, "online_ab_report/online_ab_report.md")
    applied = _apply(context, store, settings, definition, decision) if config.apply_decision else "not applied (config)"

    yield Output(
        {"experiment": definition.name, "decision": decision.action, "blocked": decision.blocked, "reasons": decision.reasons,
         "applied": applied, "report_html": str(html_path), "run_id": run.info.run_id},
        metadata={
            "decision": MetadataValue.text(decision.action), "applied": MetadataValue.text(applied),
            "summary": MetadataValue.md(markdown), "arms": table(pd.DataFrame(arm_rows(report))),
            "report_html": MetadataValue.path(str(html_path)),
            "mlflow_run": MetadataValue.url(settings.run_url(experiment_id, run.info.run_id)),
            "users": MetadataValue.int(sum(s.users for s in analysis.arms.values())),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        },
    )  # fmt: skip
    yield AssetCheckResult(check_name=SRM_CHECK, passed=not analysis.srm.failed,
                           metadata={"p_value": analysis.srm.p_value, "users": str(analysis.srm.observed)})  # fmt: skip
    failed = [g.metric for g in analysis.guardrails if not g.passed]
    yield AssetCheckResult(check_name=GUARDRAIL_CHECK, passed=not failed, metadata={"failed": ", ".join(failed) or "none"})


def _records(config: OnlineABConfig) -> ExperimentRecords:
    if config.records == "parquet":
        return ParquetRecords(config.records_dir or None)
    return EventStoreRecords(open_store(config.event_store))


def _apply(context: AssetExecutionContext, store: ExperimentStore, settings, definition, decision: online.Decision) -> str:  # noqa: ANN001
    """Promote: alias `champion` -> the treatment's version, experiment stopped; rollback: experiment stopped (its
    users go back to the control)."""
    if decision.action == online.PROMOTE:
        name = settings.registered_model_name
        version = registry.resolve_ref(settings, name, definition.arms[definition.treatment])
        registry.promote_version(settings, name, version, f"{definition.name}: {decision.reasons[0]}")
        store.stop(definition.name, f"promoted {definition.treatment} ({name} v{version})")
        context.log.info("online A/B %s: promoted %s v%s to champion", definition.name, name, version)
        return f"champion -> {name} v{version}; experiment stopped"
    if decision.action == online.ROLLBACK:
        store.stop(definition.name, f"rolled back {definition.treatment}: {'; '.join(decision.reasons)}")
        return "experiment stopped; treatment out of traffic"
    return "nothing (continue)"


online_ab_job = define_asset_job("online_ab_evaluation", selection=AssetSelection.assets(online_ab_report),
                                 description="The online A/B report of one running experiment (partition).")  # fmt: skip


@sensor(job=online_ab_job, minimum_interval_seconds=int(os.environ.get("RECSYS_ONLINE_AB_INTERVAL", "300")),
        default_status=DefaultSensorStatus.RUNNING)  # fmt: skip
def online_ab_report_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    """Every running experiment becomes a partition and is re-analysed each interval (the mSPRT allows the peeking)."""
    running = [e.name for e in ExperimentStore().list(running_only=True)]
    if not running:
        return SkipReason("no running experiment")
    known = set(context.instance.get_dynamic_partitions(experiments.name))
    added = sorted(set(running) - known)
    bucket = int(time.time() // 60)
    return SensorResult(
        run_requests=[RunRequest(run_key=f"{name}:{bucket}", partition_key=name) for name in running],
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(experiments.name, added)] if added else [],
    )
