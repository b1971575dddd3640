"""Export: the trained model as ONNX (fp32 + int8) with its item index, parity- and recall-checked, registered as
`challenger`."""

import shutil
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from recsys_core.export import (
    check_parity,
    compare_rankings,
    export_onnx,
    model_fingerprint,
    onnx_dir_sizes,
    quantize_onnx_dir,
    register_onnx_model,
)
from recsys_core.model import ModelBundle
from recsys_core.retrieval import IndexConfig
from recsys_core.paths import recsys_home
from recsys_core.serving.scorer import OnnxScorer
from recsys_dagster.metadata import table
from recsys_dagster.resources.compute import ComputeResource
from recsys_dagster.resources.tracking import MlflowResource


class ExportConfig(Config):
    parity_users: int = Field(64, description="Users sampled for the ORT vs PyTorch parity check (each also as unknown user).")
    parity_rtol: float = Field(1e-4, description="Relative tolerance for user vectors and scores.")
    parity_atol: float = Field(1e-4, description="Absolute tolerance for user vectors and scores.")
    int8_users: int = Field(300, description="Users on which int8 rankings are compared with fp32.")
    exact_max_items: int = Field(200_000, description="Up to this many items serving scans exactly; above, an IVF index.")
    recall_target: float = Field(0.95, description="recall@10 of the index against the exact scan that export tunes for.")
    recall_users: int = Field(500, description="Users sampled (seeded) to measure the index's recall@10 at export.")

    def index_config(self) -> IndexConfig:
        return IndexConfig(exact_max_items=self.exact_max_items, target_recall=self.recall_target)


def _providers(compute: ComputeResource) -> str:
    """The compute resource's device as an ORT provider choice ("cuda:1" -> "cuda")."""
    return compute.device.split(":")[0] if compute.device != "auto" else "auto"


def _parity(model_dir: str, onnx_dir: str, providers: str, config: ExportConfig) -> dict[str, Any]:
    bundle = ModelBundle.load(model_dir)
    scorer = OnnxScorer.from_dir(onnx_dir, providers=providers)
    report = check_parity(bundle, scorer, n_users=config.parity_users, rtol=config.parity_rtol, atol=config.parity_atol)
    return report.as_dict()


@asset(
    description="ONNX serving directory (user graph, top-k graph, item matrix, bundle) plus an int8 variant; "
    "registered in MLflow with alias `challenger`.",
    kinds={"onnx", "mlflow"},
)
def onnx_model(
    context: AssetExecutionContext,
    config: ExportConfig,
    trained_model: dict,
    validated_items: pd.DataFrame,
    mlflow: MlflowResource,
    compute: ComputeResource,
) -> Output[dict]:
    model_dir = trained_model["model_dir"]
    export_target = recsys_home() / "artifacts" / "onnx_model" / model_fingerprint(model_dir)
    if export_target.exists():
        shutil.rmtree(export_target)
    fp32_dir, int8_dir = export_target / "fp32", export_target / "int8"
    manifest = export_onnx(model_dir, fp32_dir, validated_items, config.index_config(), config.recall_users)
    providers = _providers(compute)

    parity = _parity(model_dir, str(fp32_dir), providers, config)
    if not parity["passed"]:
        raise Failure("ONNX outputs differ from PyTorch beyond tolerance; not registering", metadata={"parity": MetadataValue.json(parity)})

    quantize_onnx_dir(fp32_dir, int8_dir)
    int8 = compare_rankings(
        OnnxScorer.from_dir(fp32_dir, providers=providers), OnnxScorer.from_dir(int8_dir, providers=providers),
        n_users=config.int8_users,
    )
    sizes_fp32, sizes_int8 = onnx_dir_sizes(fp32_dir), onnx_dir_sizes(int8_dir)
    int8.update(
        user_encoder_bytes_fp32=sizes_fp32["user_encoder.onnx"], user_encoder_bytes_int8=sizes_int8["user_encoder.onnx"],
    )
    registered = register_onnx_model(
        mlflow.settings(), fp32_dir, trained_model.get("run_id"), int8_dir, {f"int8_{key}": value for key, value in int8.items()}
    )
    context.log.info("registered %s version %s as challenger", registered["registered_model_name"], registered["version"])
    value = {
        **registered,
        "onnx_dir": str(fp32_dir),
        "quantized_dir": str(int8_dir),
        "model_dir": model_dir,
        "training_run_id": trained_model.get("run_id"),
        "fingerprint": manifest["fingerprint"],
        "n_items": manifest["n_items"],
        "dim": manifest["dim"],
        "retrieval": manifest["retrieval"],
        "parity": parity,
        "int8": int8,
    }
    sizes = pd.DataFrame({"file": list(sizes_fp32), "fp32_bytes": list(sizes_fp32.values()),
                          "int8_bytes": [sizes_int8.get(name) for name in sizes_fp32]})  # fmt: skip
    metadata = {
        "registered_version": MetadataValue.text(registered["version"]),
        "model_uri": MetadataValue.text(registered["model_uri"]),
        "mlflow_run": MetadataValue.url(registered["run_url"]),
        "onnx_dir": MetadataValue.path(str(fp32_dir)),
        "parity": table(pd.DataFrame([parity])),
        "retrieval": MetadataValue.json(manifest["retrieval"]),
        "recall_at_10": MetadataValue.float(float(manifest["retrieval"]["recall_at_10"])),
        "int8_vs_fp32": table(pd.DataFrame([int8])),
        "sizes": table(sizes),
        "export_seconds": MetadataValue.float(manifest["export_seconds"]),
    }
    return Output(value, metadata=metadata)


@asset_check(asset=onnx_model, blocking=True, description="ORT user vectors and scores match PyTorch; top-10 lists agree (ties aside).")
def onnx_parity(onnx_model: dict) -> AssetCheckResult:
    parity = _parity(onnx_model["model_dir"], onnx_model["onnx_dir"], "auto", ExportConfig())
    return AssetCheckResult(
        passed=bool(parity["passed"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={key: MetadataValue.float(float(value)) if isinstance(value, float) else MetadataValue.text(str(value))
                  for key, value in parity.items()},  # fmt: skip
    )


def recall_check(retrieval: dict[str, Any], target: float) -> AssetCheckResult:
    """Passes when the serving index's recall@10 (measured at export) reaches `target`; the exact scan always does."""
    recall = float(retrieval["recall_at_10"])
    return AssetCheckResult(
        passed=recall >= target,
        severity=AssetCheckSeverity.ERROR,
        metadata={"recall_at_10": MetadataValue.float(recall), "target": MetadataValue.float(target),
                  "index": MetadataValue.json(retrieval)},  # fmt: skip
    )


@asset_check(
    asset=onnx_model, blocking=True,
    description="recall@10 of the serving item index against the exact scan, on users sampled at export, is >= 0.95.",
)  # fmt: skip
def index_recall(onnx_model: dict) -> AssetCheckResult:
    return recall_check(onnx_model["retrieval"], ExportConfig().recall_target)
