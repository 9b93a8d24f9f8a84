"""Memory and scale for the engine: activation checkpointing and FSDP, for any percli model.

Both act on a model's *repeated blocks*: the non-leaf modules held in an `nn.ModuleList` (Hiera's
`HieraBlock`, DINOv2's `DinoBlock`, CLIP/PE's `ResidualAttentionBlock`, Audio-MAE's `Block`, ...).

- `set_grad_checkpointing(model)`: each block's forward runs under `torch.utils.checkpoint`
  (non-reentrant, RNG state preserved, so drop-path masks replay exactly) while training with
  gradients; parameter names and outputs are unchanged.
- FSDP: `fsdp_plugin()` asks Accelerate for FSDP2 with every block its own shard unit (the blocks'
  class names go in as `_no_split_modules`, what Accelerate's transformer wrap policy reads).
  Accelerate enables FSDP for accelerators only; `enable_fsdp` switches a CPU (gloo) process group
  onto the same FSDP2 path, since `fully_shard` runs there too (tests, CPU clusters).
- Sharded optimizer state: `local_optimizer_state` turns an FSDP2 optimizer's DTensor states into
  the rank's local shards (what `optimizer.rank<R>.safetensors` holds), `shard_like_params` wraps
  them back around the current parameters' layout on resume.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The non-leaf modules held in ModuleLists (transformer blocks), outermost lists first."""
    seen: set[int] = set()
    blocks = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for child in module:
                if not isinstance(child, nn.ModuleList) and any(True for _ in child.children()) \
                        and id(child) not in seen:
                    seen.add(id(child))
                    blocks.append(child)
    return blocks


def _checkpointed(block: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    if block.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> int:
    """Recompute each repeated block's activations in the backward pass instead of keeping them.

    Returns the number of blocks changed; a model without repeated blocks raises ValueError.
    """
    blocks = repeated_blocks(model)
    if enable and not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (modules in an nn.ModuleList) to "
                         "checkpoint; set model.grad_checkpointing=false")
    for block in blocks:
        wrapped = "_percli_plain_forward" in block.__dict__
        if enable and not wrapped:
            block._percli_plain_forward = block.forward
            block.forward = functools.partial(_checkpointed, block, block.forward)
        elif not enable and wrapped:
            block.forward = block.__dict__.pop("_percli_plain_forward")
    return len(blocks)


def block_class_names(model: nn.Module) -> list[str]:
    return sorted({type(b).__name__ for b in repeated_blocks(model)})


def fsdp_plugin() -> Any:
    """FSDP2, every repeated block a shard unit, parameters resharded after forward."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          reshard_after_forward=True, state_dict_type="FULL_STATE_DICT")


def enable_fsdp(accelerator: Any, plugin: Any) -> None:
    """Put a multi-process CPU (gloo) Accelerator on the FSDP path (Accelerate only does so for GPUs)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as Accelerate records its own


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def prepare_for_fsdp(model: nn.Module) -> None:
    """Name the model's block classes as shard units (unless the model names its own)."""
    if getattr(model, "_no_split_modules", None) is None:
        model._no_split_modules = block_class_names(model)


def _local(value: Any) -> Any:
    return value.to_local() if hasattr(value, "to_local") else value


def local_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state_dict with each DTensor replaced by this rank's shard."""
    return {"state": {pid: {k: _local(v) for k, v in s.items()} for pid, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def full_optimizer_state(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer state_dict from the ranks' shards (rank order): FSDP2 splits every parameter, and so
    its state tensors, along dim 0; scalars (AdamW's step) are the same on every rank."""
    first = shards[0]
    state = {}
    for pid, pstate in first["state"].items():
        state[pid] = {name: torch.cat([s["state"][pid][name] for s in shards])
                      if torch.is_tensor(value) and value.dim() > 0 else value for name, value in pstate.items()}
    return {"state": state, "param_groups": first["param_groups"]}


def dim0_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """Rank `rank`'s rows of a dim-0 split over `world` (torch.chunk's sizes, as FSDP2 splits)."""
    size = -(-rows // world)
    start = min(rank * size, rows)
    return start, min(start + size, rows) - start


def shard_like_params(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state_dict (local shards, or full tensors) laid out as the optimizer's parameters are:
    for a DTensor parameter each state tensor of its local shape is wrapped around that shard, and a full
    one is cut to this rank's rows first; plain parameters take their state as it is."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[int, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        param = params[int(pid)]
        entry = {}
        for name, value in pstate.items():
            if isinstance(param, DTensor) and torch.is_tensor(value) and value.dim() > 0:
                local = param.to_local()
                if value.shape == param.shape and local.shape != param.shape:
                    start, length = dim0_rows(param.shape[0], param.device_mesh.size(),
                                                   param.device_mesh.get_local_rank())
                    value = value.narrow(0, start, length)
                if value.shape != local.shape:
                    raise ValueError(f"optimizer state {name!r} of parameter {pid} has shape {tuple(value.shape)}; "
                                     f"this process holds {tuple(local.shape)} of {tuple(param.shape)}")
                value = DTensor.from_local(value.to(local.device).contiguous(), param.device_mesh, param.placements,
                                           run_check=False, shape=param.shape, stride=param.stride())
            entry[name] = value
        out[int(pid)] = entry
    return {"state": out, "param_groups": state["param_groups"]}
