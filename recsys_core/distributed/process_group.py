"""Process-group set-up and the small hooks training needs; without an initialised group each is the identity.

Ranks split each epoch's users, and each rank takes `batch_size / world_size` of them per step, so a step's global
batch, the number of steps and the learning-rate schedule are those of one process: the result should match it.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main_process() -> bool:
    """Rank 0 alone saves checkpoints and writes results."""
    return rank() == 0


def init_from_env() -> torch.device:
    """Joins the group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...): NCCL with one GPU per rank, else gloo."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        return device
    dist.init_process_group("gloo")
    return torch.device("cpu")


def wrap_ddp(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel when a group exists (gradients averaged across ranks each step).

    Unused parameters are allowed: the frozen ALS/MF priors and the text path under item dropout skip some steps.
    """
    if not active():
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True
    )


def shard_epoch(order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """This rank's share of the epoch's user order and its per-step batch size.

    The order is padded by wrapping around to a multiple of the world size so every rank runs the same number of
    steps (a rank with one step more would wait forever in the gradient all-reduce).
    """
    size = world_size()
    if size == 1:
        return order, batch_size
    padded = torch.cat([order, order[: (-len(order)) % size]])
    return padded[rank() :: size], -(-batch_size // size)


def all_reduce_mean(values: np.ndarray) -> np.ndarray:
    """Mean of `values` over the ranks (the epoch's training losses, so every rank logs the global figure)."""
    if not active():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.as_tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world_size()).cpu().numpy()
