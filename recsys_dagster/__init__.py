"""recsys_dagster: the recsys pipeline as Dagster software-defined assets. Thin: logic lives in recsys_core."""
