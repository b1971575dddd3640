"""Compute device as a Dagster resource, so a deployment can pin `cuda:1` or force `cpu`."""

from __future__ import annotations

import torch
from dagster import ConfigurableResource

from recsys_core.device import resolve_device


class ComputeResource(ConfigurableResource):
    """`device="auto"` picks CUDA when present; `num_threads=0` leaves torch's default."""

    device: str = "auto"
    num_threads: int = 0
    seed: int = 42

    def torch_device(self) -> torch.device:
        if self.num_threads > 0:
            torch.set_num_threads(self.num_threads)
        return resolve_device(self.device)
