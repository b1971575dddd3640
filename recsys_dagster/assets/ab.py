"""A/B: the just-exported challenger against the registry's champion on the same held-out users; promotes or holds."""


import time
from collections.abc import Iterator

import mlflow as mlflow_fluent
import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from recsys_core.experiments import offline, registry, reports
from recsys_core.evaluation import OnnxRecommender, sample_users
from recsys_core.paths import recsys_home
from recsys_core.schema import USER_ID
from recsys_core.serving.scorer import OnnxScorer
from recsys_dagster.metadata import table
from recsys_dagster.resources.tracking import MlflowResource

CHECK = "challenger_not_worse_than_champion"


class ABConfig(Config):
    k: int = Field(10, description="List length of the compared top-k lists.")
    primary_metric: str = Field("ndcg@10", description="Metric whose paired lift decides.")
    min_lift: float = Field(0.0, description="Smallest absolute lift of the primary metric that promotes.")
    require_ci_above_zero: bool = Field(True, description="Promote only when the lift's bootstrap CI excludes 0.")
    guardrails: dict[str, float] = Field(
        {"recall@10": 0.02, "hr@10": 0.02}, description="Metric -> largest tolerated relative drop."
    )
    max_regression: float = Field(0.02, description="Relative drop of the primary metric that counts as worse.")
    n_boot: int = Field(2000, description="Bootstrap resamples.")
    salt: str = Field("recsys-ab", description="Salt of the 50/50 user hash split in the replay simulation.")
    seed: int = Field(42, description="Bootstrap seed, and the seed of the user sample.")
    max_users: int = Field(20_000, description="Held-out users compared: all up to this many, else a seeded uniform "
                           "sample of this many (the paired bootstrap CIs then cover the sampling); 0: all.")

    def rule(self) -> offline.DecisionRule:
        return offline.DecisionRule(
            primary_metric=self.primary_metric, min_lift=self.min_lift, require_ci_above_zero=self.require_ci_above_zero,
            guardrails=dict(self.guardrails), max_regression=self.max_regression,
        )  # fmt: skip


def _recs(serving_dir: str, users: np.ndarray, k: int) -> pd.DataFrame:
    return OnnxRecommender(OnnxScorer.from_dir(serving_dir, providers="auto"))(users, k)


@asset(
    kinds={"mlflow", "html"},
    check_specs=[
        AssetCheckSpec(
            CHECK, asset="ab_report", blocking=True,
            description="Fails when the challenger is worse than the champion beyond tolerance; then nothing is promoted.",
        )
    ],
)  # fmt: skip
def ab_report(
    context: AssetExecutionContext,
    config: ABConfig,
    mlflow: MlflowResource,
    onnx_model: dict,
    test_ratings: pd.DataFrame,
) -> Iterator:
    """Paired offline comparison and replay simulation of challenger vs champion; moves alias `champion` on promote."""
    started = time.perf_counter()
    settings = mlflow.settings()
    challenger = registry.RegisteredModel(onnx_model["registered_model_name"], str(onnx_model["version"]), onnx_model["onnx_dir"])
    champion = registry.current_champion(settings, challenger.name)
    all_users = test_ratings[USER_ID].nunique()
    users = sample_users(test_ratings[USER_ID].to_numpy(), config.max_users, config.seed)
    if len(users) < all_users:
        test_ratings = test_ratings[test_ratings[USER_ID].isin(users)]
    challenger_recs = _recs(challenger.serving_dir, users, config.k)
    champion_recs = _recs(champion.serving_dir, users, config.k) if champion else None
    report = offline.build_ab_report(
        challenger_recs, test_ratings, champion_recs=champion_recs, challenger_label=challenger.label,
        champion_label=champion.label if champion else None, rule=config.rule(), k=config.k, n_boot=config.n_boot,
        seed=config.seed, salt=config.salt,
    )  # fmt: skip
    decision = report.decision

    out_dir = recsys_home() / "artifacts" / "ab_report" / context.run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "ab_report.html"
    html_path.write_text(reports.render_html(report, title=f"A/B report: {challenger.label}"))
    markdown = reports.render_markdown(report)
    (out_dir / "ab_report.md").write_text(markdown)

    experiment_id = settings.activate()
    tags = {"recsys.stage": "ab", "recsys.decision": decision.action, "recsys.challenger_version": challenger.version,
            "recsys.champion_version": champion.version if champion else "none", "dagster.run_id": context.run_id}
    if onnx_model.get("training_run_id"):
        tags["mlflow.parentRunId"] = onnx_model["training_run_id"]
    with mlflow_fluent.start_run(experiment_id=experiment_id, run_name="ab_report", tags=tags) as run:
        for name, comparison in (report.comparisons or {}).items():
            key = name.replace("@", "_at_")
            mlflow_fluent.log_metrics({f"lift/{key}": comparison.lift, f"ci_low/{key}": comparison.ci_low,
                                       f"ci_high/{key}": comparison.ci_high})  # fmt: skip
        mlflow_fluent.log_metrics({f"challenger/{k.replace('@', '_at_')}": v for k, v in report.challenger_metrics.items()})
        if report.replay:
            mlflow_fluent.log_metrics({"replay/ctr_champion": report.replay.champion.ctr,
                                       "replay/ctr_challenger": report.replay.challenger.ctr})  # fmt: skip
        mlflow_fluent.log_artifact(str(html_path), artifact_path="ab_report")
        mlflow_fluent.log_text(markdown, "ab_report/ab_report.md")
        artifact_uri = f"{run.info.artifact_uri}/ab_report/ab_report.html"
    run_url = settings.run_url(experiment_id, run.info.run_id)

    promoted = registry.apply_decision(settings, challenger, decision)
    context.log.info("A/B %s: %s (champion %s)", decision.action, challenger.label, champion.label if champion else "none")
    rows = reports.comparison_rows(report)
    metadata = {
        "decision": MetadataValue.text(decision.action),
        "promoted": MetadataValue.bool(promoted),
        "challenger": MetadataValue.text(challenger.label),
        "champion_before": MetadataValue.text(champion.label if champion else "none (first model)"),
        "summary": MetadataValue.md(markdown),
        "comparison": table(pd.DataFrame(rows)) if rows else MetadataValue.text("no champion to compare with"),
        "report_html": MetadataValue.path(str(html_path)),
        "report_artifact": MetadataValue.text(artifact_uri),
        "mlflow_run": MetadataValue.url(run_url),
        "users": MetadataValue.int(report.n_users),
        "user_sample": MetadataValue.text(f"all {all_users:,} held-out users" if len(users) == all_users else
                                          f"{len(users):,} of {all_users:,} held-out users, uniform, seed {config.seed}"),
        "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
    }
    value = {
        **report.to_dict(),
        "promoted": promoted,
        "registered_model_name": challenger.name,
        "challenger_version": challenger.version,
        "champion_version_before": champion.version if champion else None,
        "champion_version_after": challenger.version if promoted else (champion.version if champion else None),
        "report_html": str(html_path),
        "report_artifact": artifact_uri,
        "run_id": run.info.run_id,
        "run_url": run_url,
    }
    yield Output(value, metadata=metadata)
    yield AssetCheckResult(
        check_name=CHECK,
        passed=not decision.worse_beyond_tolerance,
        severity=AssetCheckSeverity.ERROR,
        metadata={"decision": MetadataValue.text(decision.action), "reasons": MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons))},
    )
