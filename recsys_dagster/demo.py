"""Materialise the whole asset graph on the embedded default data and print what each stage produced."""

import argparse
import os
import time

from dagster import AssetKey, DagsterInstance, MetadataValue

# Metadata worth a line in the summary, in this order, when an asset reports it.
SUMMARY_KEYS = (
    "rows", "dagster/row_count", "rejected_rows", "users", "items", "n_items", "items_encoded", "items_reused", "dim",
    "best_epoch", "n_parameters", "train_seconds", "registered_version", "rmse", "ndcg@10", "map@10", "recall@10",
    "decision",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", default="full_pipeline", help="job to run (default: every asset)")


def _value(entry: MetadataValue) -> str:
    value = getattr(entry, "value", entry)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(instance: DagsterInstance, keys: list[AssetKey]) -> list[str]:
    lines = []
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        if event is None or event.asset_materialization is None:
            lines.append(f"  {key.to_user_string():<24} not materialised")
            continue
        metadata = event.asset_materialization.metadata
        shown = [f"{name}={_value(metadata[name])}" for name in SUMMARY_KEYS if name in metadata]
        lines.append(f"  {key.to_user_string():<24} " + ", ".join(shown))
    return lines


def run(args: argparse.Namespace) -> int:
    from recsys_dagster.definitions import defs

    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("set DAGSTER_HOME (make demo does) so the runs show up in the Dagster UI afterwards")
    job = defs.resolve_job_def(args.job)
    started = time.perf_counter()
    with DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        keys = [key for key in defs.resolve_asset_graph().toposorted_asset_keys if key in job.asset_layer.selected_asset_keys]
        print(f"\nrecsys demo: job {args.job!r} {'succeeded' if result.success else 'FAILED'} "
              f"in {time.perf_counter() - started:.1f}s (run {result.run_id})")  # fmt: skip
        print("\n".join(summary(instance, keys)))
    print("\nBrowse the lineage, metadata and checks: make ui  (http://127.0.0.1:3000)")
    print("MLflow runs and the model registry:       make mlflow-ui  (http://127.0.0.1:5000)")
    return 0 if result.success else 1
