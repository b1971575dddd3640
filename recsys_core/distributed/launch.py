"""Training under `torchrun --nproc_per_node N`: the parent writes the inputs, N ranks train, rank 0 saves.

The parent gets back the `TrainResult` one process would return (the model bundle rank 0 saved, its per-epoch
history, best epoch and final metrics), so the caller checkpoints and logs it to MLflow exactly as before.
Run as `python -m recsys_core.distributed.launch WORKDIR` by torchrun, never directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import torch.distributed as dist

from recsys_core.distributed.process_group import init_from_env, is_main_process
from recsys_core.model import ModelBundle
from recsys_core.text_features import load_item_text_features
from recsys_core.training import TrainConfig, TrainResult, train_hybrid


def torchrun_command(workdir: Path, nproc_per_node: int) -> list[str]:
    """One machine (`--standalone`: rendezvous on a free local port); several machines need torchrun's --rdzv flags."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            "-m", "recsys_core.distributed.launch", str(workdir)]  # fmt: skip


def train_with_torchrun(
    train: pd.DataFrame,
    validation: pd.DataFrame | None,
    items: pd.DataFrame | None,
    text_path: str | None,
    config: TrainConfig,
    nproc_per_node: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """`train_hybrid` with DDP over `nproc_per_node` processes; `on_epoch` sees each epoch's row once training ends."""
    if config.n_negatives > 0:
        raise ValueError("DDP training supports the full softmax only (n_negatives=0): the sampled loss runs the "
                         "model twice per step, which DistributedDataParallel does not synchronise")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="recsys-ddp-") as tmp:
        workdir = Path(tmp)
        train.to_parquet(workdir / "train.parquet", index=False)
        if validation is not None:
            validation.to_parquet(workdir / "validation.parquet", index=False)
        if items is not None:
            items.to_parquet(workdir / "items.parquet", index=False)
        job = {"config": config.to_dict(), "text_path": text_path}
        (workdir / "job.json").write_text(json.dumps(job))
        completed = subprocess.run(torchrun_command(workdir, nproc_per_node), capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"torchrun exited with {completed.returncode}:\n{completed.stderr[-4000:]}")
        outcome = json.loads((workdir / "result.json").read_text())
        bundle = ModelBundle.load(workdir / "model")
    if on_epoch is not None:
        for row in outcome["history"]:
            on_epoch(int(row["epoch"]), row)
    return TrainResult(bundle, outcome["history"], outcome["best_epoch"], outcome["train_seconds"], outcome["final_metrics"],
                       outcome["cost"])


def _read_optional(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def run_rank(workdir: Path) -> None:
    """One rank: join the group, train on every rank (DDP averages the gradients), save and report on rank 0."""
    device = init_from_env()
    try:
        job = json.loads((workdir / "job.json").read_text())
        config = TrainConfig(**{**job["config"], "device": str(device), "show_progress": False})
        text = load_item_text_features(job["text_path"]) if job["text_path"] else None
        result = train_hybrid(pd.read_parquet(workdir / "train.parquet"), _read_optional(workdir / "validation.parquet"),
                              _read_optional(workdir / "items.parquet"), text, config)  # fmt: skip
        if is_main_process():
            result.bundle.save(workdir / "model")
            outcome = {"history": result.history, "best_epoch": result.best_epoch,
                       "train_seconds": result.train_seconds, "final_metrics": result.final_metrics, "cost": result.cost}  # fmt: skip
            (workdir / "result.json").write_text(json.dumps(outcome))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_rank(Path(sys.argv[1]))
