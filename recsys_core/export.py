"""ONNX export of the scoring path, its parity check against PyTorch, int8 quantisation and registry registration.

Two graphs, so the catalogue can change size without re-exporting the user side, and neither holds the catalogue:
- `user_encoder.onnx`: (user_idx, hist_vecs, hist_ratings, hist_mask) -> user_vec, exported with torch.onnx
  (dynamo exporter, dynamic batch). `hist_vecs` are the item-tower vectors of the history items: the first
  `config.dim` columns of `item_matrix.npy` rows, gathered by the scorer. The item matrix is held once per serving
  process (it used to be frozen into this graph as well).
- `topk.onnx`: (user_vec, exclude_mask, k, item_matrix) -> (scores, item_idx), built with onnx.helper as
  Gemm -> Where(-inf) -> TopK, dynamic in batch and catalogue size (`recsys_core.serving.graphs`).
  `item_matrix.npy` ([n_items, dim]) ships beside it.
- `item_index.faiss`: above `IndexConfig.exact_max_items` a norm-tiered IVF index (`recsys_core.retrieval`) that
  serving uses for top-k instead of the exact scan; its recall@10 against the exact scan on sampled users is in the
  manifest.
The int8 variant quantises the user graph with onnxruntime.quantization and scans a per-item int8 copy of the item
matrix baked into its top-k graph. Parity (`check_parity`) compares ORT with `HybridRecommender.user_vectors` itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import pandas as pd
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from recsys_core.model import HybridRecommender, ModelBundle
from recsys_core.retrieval import INDEX_FILE, IndexConfig, build_item_index
from recsys_core.serving.graphs import IR_VERSION, OPSET, build_int8_topk_graph, build_topk_graph
from recsys_core.serving.scorer import (
    BUNDLE_FILES,
    ITEM_MATRIX,
    ITEM_TITLES,
    MANIFEST,
    TOPK,
    USER_ENCODER,
    USER_INPUTS,
    History,
    OnnxScorer,
)
from recsys_core.tracking import MlflowSettings

CHALLENGER = "challenger"


class UserEncoder(nn.Module):
    """`HybridRecommender.user_vectors` from the history's item vectors: the model gathers `item_vecs[hist_items]`,
    so passing the gathered rows as a [B * L, dim] catalogue with positions as indices is the same computation."""

    def __init__(self, model: HybridRecommender) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(
        self, user_idx: torch.Tensor, hist_vecs: torch.Tensor, hist_ratings: torch.Tensor, hist_mask: torch.Tensor
    ) -> torch.Tensor:
        batch, length, dim = hist_vecs.shape
        positions = torch.arange(batch * length, device=hist_vecs.device).reshape(batch, length)
        return self.model.user_vectors(user_idx, positions, hist_ratings, hist_mask, item_vecs=hist_vecs.reshape(-1, dim))


def export_user_encoder(model: HybridRecommender, path: Path, opset: int = OPSET) -> Path:
    """torch.onnx.export (dynamo) with a dynamic batch; history length is the model's fixed `history_len`."""
    encoder = UserEncoder(model).eval()
    batch, length = 2, model.config.history_len
    example = (
        torch.zeros(batch, dtype=torch.int64),
        torch.zeros(batch, length, model.config.dim, dtype=torch.float32),
        torch.zeros(batch, length, dtype=torch.float32),
        torch.ones(batch, length, dtype=torch.bool),
    )
    batch_dim = torch.export.Dim("batch", min=1, max=65_536)
    program = torch.onnx.export(
        encoder,
        example,
        input_names=list(USER_INPUTS),
        output_names=["user_vec"],
        opset_version=opset,
        dynamo=True,
        verbose=False,
        dynamic_shapes={
            "user_idx": {0: batch_dim},
            "hist_vecs": {0: batch_dim},
            "hist_ratings": {0: batch_dim},
            "hist_mask": {0: batch_dim},
        },
        optimize=True,
    )
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.save_model(proto, str(path), save_as_external_data=proto.ByteSize() > 1_900_000_000)
    return path


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """Content hash of the weights and bundle files: the same model always exports to the same directory name."""
    model_dir = Path(model_dir)
    return _sha256([model_dir / "model.safetensors", *(model_dir / name for name in BUNDLE_FILES)])[:16]


def _index_entry(
    bundle: ModelBundle, item_matrix: np.ndarray, out_dir: Path, config: IndexConfig, recall_users: int
) -> dict[str, Any]:
    """Builds the item index when the catalogue is large enough; recall@10 on a seeded sample of known users."""
    n_users = len(bundle.user_index)
    rows = np.sort(np.random.default_rng(config.seed).choice(n_users, size=min(recall_users, n_users), replace=False))
    hist = bundle.histories
    with torch.no_grad():
        user_vecs = bundle.model.user_vectors(
            torch.from_numpy(rows), torch.from_numpy(hist.hist_items[rows]),
            torch.from_numpy(hist.hist_ratings[rows]), torch.from_numpy(hist.hist_mask[rows]),
        ).numpy()  # fmt: skip
    index, entry = build_item_index(item_matrix, user_vecs, [bundle.seen_items(row) for row in rows], config)
    if index is not None:
        index.save(out_dir / INDEX_FILE)
    return entry


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    items: pd.DataFrame | None = None,
    index_config: IndexConfig = IndexConfig(),
    recall_users: int = 500,
) -> dict[str, Any]:
    """Writes the complete serving directory for the model in `model_dir`; returns its manifest."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    bundle = ModelBundle.load(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export_user_encoder(bundle.model, out_dir / USER_ENCODER)
    onnx.save_model(build_topk_graph(), str(out_dir / TOPK))
    with torch.no_grad():
        item_matrix = bundle.model.item_vectors().numpy().astype(np.float32)
    np.save(out_dir / ITEM_MATRIX, item_matrix)
    retrieval = _index_entry(bundle, item_matrix, out_dir, index_config, recall_users)
    del item_matrix
    for name in BUNDLE_FILES:
        shutil.copy2(model_dir / name, out_dir / name)
    if items is not None:
        known = items[items["item_id"].isin(bundle.item_index.ids)]
        titles = {int(i): str(t) for i, t in zip(known["item_id"], known["title"].fillna(""))}
        (out_dir / ITEM_TITLES).write_text(json.dumps(titles, sort_keys=True))
    manifest = {
        "format": "recsys-onnx/2",
        "precision": "fp32",
        "fingerprint": model_fingerprint(model_dir),
        "source_model_dir": str(model_dir),
        "opset": OPSET,
        "n_users": len(bundle.user_index),
        "n_items": len(bundle.item_index),
        "dim": bundle.config.output_dim,
        "history_len": bundle.config.history_len,
        "retrieval": retrieval,
        "export_seconds": round(time.perf_counter() - started, 3),
    }
    training = model_dir / "training.json"  # written by the trained_model asset
    if training.exists() and "trained_until" in (facts := json.loads(training.read_text())):
        manifest["trained_until"] = facts["trained_until"]  # live events after it are the serving-time history
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def quantize_onnx_dir(src_dir: str | Path, dst_dir: str | Path) -> dict[str, Any]:
    """A copy of `src_dir` in int8: the user graph dynamically quantised (onnxruntime.quantization: int8 weights,
    activations quantised at run time) and the top-k scan over a per-item int8 item matrix inside the graph."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    shutil.copytree(src_dir, dst_dir, ignore=shutil.ignore_patterns(USER_ENCODER, TOPK, MANIFEST))
    user_graph = onnx.load(str(src_dir / USER_ENCODER))
    # The exporter lists shapes for initializers in value_info; the quantiser transposes some of those weights, and
    # the stale shapes then fail its own shape inference. Initializers carry their shapes anyway.
    weights = {init.name for init in user_graph.graph.initializer}
    shapes = [info for info in user_graph.graph.value_info if info.name not in weights]
    del user_graph.graph.value_info[:]
    user_graph.graph.value_info.extend(shapes)
    quantize_dynamic(user_graph, dst_dir / USER_ENCODER, weight_type=QuantType.QInt8)
    onnx.save_model(build_int8_topk_graph(np.load(src_dir / ITEM_MATRIX)), str(dst_dir / TOPK))
    manifest = json.loads((src_dir / MANIFEST).read_text())
    manifest.update(precision="int8", fingerprint=manifest["fingerprint"] + "-int8")
    (dst_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def onnx_dir_sizes(directory: str | Path) -> dict[str, int]:
    directory = Path(directory)
    return {path.name: path.stat().st_size for path in sorted(directory.iterdir()) if path.is_file()}


@dataclass(frozen=True)
class ParityReport:
    """ORT vs PyTorch on a sample of users (known users and the same histories as unknown users)."""

    n_users: int
    k: int
    rtol: float
    atol: float
    max_abs_diff_user_vec: float
    max_abs_diff_scores: float
    user_vec_allclose: bool
    scores_allclose: bool
    lists_identical: int
    lists_tie_equivalent: int
    lists_different: int

    @property
    def passed(self) -> bool:
        return self.user_vec_allclose and self.scores_allclose and self.lists_different == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def lists_agree(candidate: np.ndarray, reference: np.ndarray, scores: np.ndarray, tolerance: float) -> bool:
    """Top-k lists agree up to ties: swapped or substituted items must score within `tolerance` (reference scores)."""
    boundary = scores[reference[-1]]
    if any(abs(scores[item] - boundary) > tolerance for item in set(candidate.tolist()) ^ set(reference.tolist())):
        return False
    ordered = scores[candidate]
    return bool(np.all(ordered[1:] <= ordered[:-1] + tolerance))


def check_parity(
    bundle: ModelBundle, scorer: OnnxScorer, n_users: int = 64, k: int = 10, rtol: float = 1e-4, atol: float = 1e-4, seed: int = 42
) -> ParityReport:
    """Same inputs through `HybridRecommender.user_vectors` and the ONNX graphs; seen items excluded in both."""
    n_total = len(bundle.user_index)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_total, size=min(n_users, n_total), replace=False))
    user_idx = np.concatenate([rows, np.full(len(rows), n_total)])  # the same histories as unknown users
    hist = bundle.histories
    history = History(*(np.concatenate([a[rows], a[rows]]) for a in (hist.hist_items, hist.hist_ratings, hist.hist_mask)))
    with torch.no_grad():
        torch_vecs = bundle.model.user_vectors(
            torch.from_numpy(user_idx), torch.from_numpy(history.items),
            torch.from_numpy(history.ratings), torch.from_numpy(history.mask),
        ).numpy()
        item_matrix = bundle.model.item_vectors().numpy()
    ort_vecs = scorer.user_vectors(user_idx, history)
    exclude = np.zeros((len(user_idx), len(bundle.item_index)), dtype=bool)
    for position, row in enumerate(np.concatenate([rows, rows])):
        exclude[position, bundle.seen_items(row)] = True
    torch_scores = np.where(exclude, -np.inf, torch_vecs @ item_matrix.T)
    k = min(k, len(bundle.item_index))
    ort_top_scores, ort_top = scorer.top_k(ort_vecs, exclude, k)
    torch_top = np.argsort(-torch_scores, axis=1, kind="stable")[:, :k]
    reference_at_ort = np.take_along_axis(torch_scores, ort_top, axis=1)
    finite = np.isfinite(reference_at_ort)
    identical = tie_equivalent = different = 0
    for position in range(len(user_idx)):
        tolerance = atol + rtol * float(np.abs(torch_scores[position, torch_top[position]]).max())
        if np.array_equal(ort_top[position], torch_top[position]):
            identical += 1
        elif lists_agree(ort_top[position], torch_top[position], torch_scores[position], tolerance):
            tie_equivalent += 1
        else:
            different += 1
    return ParityReport(
        n_users=len(user_idx),
        k=k,
        rtol=rtol,
        atol=atol,
        max_abs_diff_user_vec=float(np.abs(ort_vecs - torch_vecs).max()),
        max_abs_diff_scores=float(np.abs(ort_top_scores[finite] - reference_at_ort[finite]).max(initial=0.0)),
        user_vec_allclose=bool(np.allclose(ort_vecs, torch_vecs, rtol=rtol, atol=atol)),
        scores_allclose=bool(np.allclose(ort_top_scores[finite], reference_at_ort[finite], rtol=rtol, atol=atol)),
        lists_identical=identical,
        lists_tie_equivalent=tie_equivalent,
        lists_different=different,
    )


def _latency_ms(scorer: OnnxScorer, user_ids: np.ndarray, k: int) -> list[float]:
    timings = []
    for user_id in user_ids:
        started = time.perf_counter()
        scorer.recommend([int(user_id)], k=k)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def compare_rankings(reference: OnnxScorer, candidate: OnnxScorer, n_users: int = 200, k: int = 10, seed: int = 42) -> dict[str, float]:
    """How far the candidate (e.g. int8) drifts from the reference (fp32): top-k overlap, nDCG@k, vector error, speed.

    nDCG@k treats the reference's top-k as the relevant set, graded by reference rank (k, k-1, ..., 1).
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(reference.users.ids, size=min(n_users, len(reference.users)), replace=False)
    ref = reference.recommend(users.tolist(), k=k)
    cand = candidate.recommend(users.tolist(), k=k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    overlaps, ndcgs = [], []
    for r, c in zip(ref, cand):
        gain = {item: k - rank for rank, item in enumerate(r.item_ids)}
        ideal = float(np.sum(np.array(sorted(gain.values(), reverse=True)) * discounts[: len(gain)]))
        dcg = float(sum(gain.get(item, 0) * discounts[rank] for rank, item in enumerate(c.item_ids)))
        overlaps.append(len(set(r.item_ids) & set(c.item_ids)) / max(len(r.item_ids), 1))
        ndcgs.append(dcg / ideal if ideal else 1.0)
    rows = reference.users.encode(users)
    history = History(reference.histories.items[rows], reference.histories.ratings[rows], reference.histories.mask[rows])
    vec_error = np.abs(reference.user_vectors(rows, history) - candidate.user_vectors(rows, history)).max()
    latency_ref = _latency_ms(reference, users[:100], k)
    latency_cand = _latency_ms(candidate, users[:100], k)
    return {
        f"overlap@{k}": float(np.mean(overlaps)),
        f"ndcg@{k}_vs_reference": float(np.mean(ndcgs)),
        "max_abs_diff_user_vec": float(vec_error),
        "reference_p50_ms": float(np.percentile(latency_ref, 50)),
        "candidate_p50_ms": float(np.percentile(latency_cand, 50)),
    }


def register_onnx_model(
    settings: MlflowSettings,
    onnx_dir: str | Path,
    training_run_id: str | None = None,
    quantized_dir: str | Path | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Logs an export run (a child of the training run), registers the ONNX model with the whole serving directory
    as extra files, and points alias `challenger` at the new version. `champion` is never touched here."""
    onnx_dir = Path(onnx_dir)
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    experiment_id = settings.activate()
    tags = {"recsys.stage": "export", "recsys.fingerprint": manifest["fingerprint"]}
    if training_run_id:
        tags.update({"mlflow.parentRunId": training_run_id, "recsys.training_run_id": training_run_id})
    with mlflow.start_run(experiment_id=experiment_id, run_name="onnx_export", tags=tags) as run:
        mlflow.log_params({"opset": manifest["opset"], "n_items": manifest["n_items"], "dim": manifest["dim"]})
        if metrics:
            mlflow.log_metrics({key.replace("@", "_at_"): value for key, value in metrics.items()})
        if quantized_dir is not None:
            mlflow.log_artifacts(str(quantized_dir), artifact_path="onnx_int8")
        info = mlflow.onnx.log_model(
            onnx_model=onnx.load(str(onnx_dir / USER_ENCODER)),
            name="onnx_model",
            registered_model_name=settings.registered_model_name,
            extra_files=[str(path) for path in sorted(onnx_dir.iterdir()) if path.is_file()],
            save_as_external_data=False,
        )
    version = str(info.registered_model_version)
    client = settings.client()
    for key, value in {**tags, "recsys.onnx_dir": str(onnx_dir)}.items():
        if not key.startswith("mlflow."):
            client.set_model_version_tag(settings.registered_model_name, version, key, value)
    client.set_registered_model_alias(settings.registered_model_name, CHALLENGER, version)
    return {
        "registered_model_name": settings.registered_model_name,
        "version": version,
        "run_id": run.info.run_id,
        "experiment_id": experiment_id,
        "model_uri": f"models:/{settings.registered_model_name}/{version}",
        "run_url": settings.run_url(experiment_id, run.info.run_id),
    }

