"""The `online_ab_report` asset through `dagster.materialize` on a real local MLflow registry: a clearly better
treatment is promoted (alias `champion` moves, the experiment stops); a broken 45/55 split fails the blocking SRM
check and changes nothing; the sensor turns running experiments into partitions."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, build_sensor_context, materialize

from recsys_core.experiments.definitions import ExperimentDefinition, ExperimentStore
from recsys_core.experiments.simulate_command import ParquetSink
from recsys_core.experiments.simulation import SimulatedUsers, simulate_records
from recsys_core.synthetic import SyntheticConfig
from recsys_core.tracking import MlflowSettings
from recsys_dagster.assets.online_ab import SRM_CHECK, experiments, online_ab_report, online_ab_report_sensor
from recsys_dagster.resources.tracking import MlflowResource

MODEL = "recsys-hybrid"


def _registry(root: Path) -> MlflowSettings:
    settings = MlflowSettings(registered_model_name=MODEL)
    client = settings.client()
    client.create_registered_model(MODEL)
    for version in ("1", "2"):
        (root / f"v{version}").mkdir()
        client.create_model_version(MODEL, source=str(root / f"v{version}"))
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    return settings


def _experiment(store: ExperimentStore, records: Path, name: str, true_shares: dict[str, float]) -> None:
    simulated = SimulatedUsers(SyntheticConfig(n_users=200, n_items=300, n_ratings=4000, seed=3))
    definition = store.create(ExperimentDefinition(name, {"champion": "alias:champion", "challenger": "alias:challenger"},
                                                   {"champion": 0.5, "challenger": 0.5}, min_users_per_arm=50))  # fmt: skip
    lists = {"champion": simulated.ranked_lists(10, noise=0.6, seed=1), "challenger": simulated.ranked_lists(10)}
    exposures, clicks = simulate_records(simulated, lists, true_shares, definition.effective_salt, visitors=4000,
                                         requests=6000, seed=1, start_time=definition.start_time + 1)  # fmt: skip
    ParquetSink(records / name).write(exposures, clicks)


def test_online_report_promotes_and_srm_blocks(recsys_home: Path, tmp_path: Path):
    settings = _registry(tmp_path)
    store, records = ExperimentStore(), recsys_home / "experiments" / "records"
    _experiment(store, records, "better", {"champion": 0.5, "challenger": 0.5})
    _experiment(store, records, "broken", {"champion": 0.45, "challenger": 0.55})
    with DagsterInstance.ephemeral() as instance:
        sensor_result = online_ab_report_sensor(build_sensor_context(instance=instance))
        assert sorted(r.partition_key for r in sensor_result.run_requests) == ["better", "broken"]
        assert sorted(sensor_result.dynamic_partitions_requests[0].partition_keys) == ["better", "broken"]
        instance.add_dynamic_partitions(experiments.name, ["better", "broken"])
        resources = {"mlflow": MlflowResource()}
        parquet = {"ops": {"online_ab_report": {"config": {"records": "parquet"}}}}
        better = materialize([online_ab_report], partition_key="better", instance=instance, resources=resources,
                             run_config=parquet)  # fmt: skip
        assert better.success
        value = better.output_for_node("online_ab_report")
        assert value["decision"] == "promote", value["reasons"]
        assert str(settings.client().get_model_version_by_alias(MODEL, "champion").version) == "2"
        assert store.get("better").status == "stopped" and "promoted challenger" in store.get("better").stop_reason
        assert Path(value["report_html"]).read_text().count("data:image/png") == 1

        settings.client().set_registered_model_alias(MODEL, "champion", "1")
        broken = materialize([online_ab_report], partition_key="broken", instance=instance, resources=resources,
                             run_config=parquet, raise_on_error=False)  # fmt: skip
        checks = {c.check_name: c.passed for c in broken.get_asset_check_evaluations()}
        assert checks[SRM_CHECK] is False
        value = broken.output_for_node("online_ab_report")
        assert value["decision"] == "continue" and value["blocked"] and "sample ratio mismatch" in value["reasons"][0]
        assert str(settings.client().get_model_version_by_alias(MODEL, "champion").version) == "1"
        assert store.get("broken").status == "running"
