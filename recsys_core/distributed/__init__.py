"""Data-parallel training with PyTorch DDP: one process per device, started by `torchrun`.

`process_group` holds the hooks `recsys_core.training` calls (all no-ops without a process group), `launch` runs
training under `torchrun --nproc_per_node N` and hands back the same `TrainResult` as one process.
"""

from recsys_core.distributed.process_group import all_reduce_mean, is_main_process, shard_epoch, world_size, wrap_ddp

__all__ = ["all_reduce_mean", "is_main_process", "shard_epoch", "world_size", "wrap_ddp"]
