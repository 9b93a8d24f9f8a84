"""Processes of a data job: one by default, shard-parallel over torch.distributed when launched so.

`accelerate launch` and torchrun set WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT; data jobs join a
gloo group (only counts and small objects travel). Training jobs use Accelerate instead (core/engine).
The rank and world size are computed once per run (`init`) and passed down, never re-derived.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def init() -> tuple[int, int]:
    """(rank, world size); joins the gloo process group when launched with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: np.ndarray, world: int) -> np.ndarray:
    """Element-wise sum over processes (exact for counts: int64, as gloo has no uint64 reduction)."""
    if world <= 1:
        return values
    import numpy as np
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(values).astype(np.int64 if values.dtype.kind in "iub" else
                                                                       np.float64))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy().astype(values.dtype)


def all_gather(obj: Any, world: int) -> list[Any]:
    """Every process's `obj`, in rank order."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any, world: int) -> Any:
    """Rank 0's `obj` on every process."""
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
