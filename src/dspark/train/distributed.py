"""Process groups and data/model parallelism for `torchrun` (DDP or FSDP2); no-ops for one process.

FSDP is FSDP2 (`torch.distributed.fsdp.fully_shard`) sharded per decoder layer: each layer's attention
and MLP are their own units (the drafters call the attention's `q` / `kv` / `attend` directly, so those
are registered as forward methods and gather the layer's weights whenever they run); the root unit,
the wrapped objective module, holds the rest (embedding, LM head, fc, norms, heads). Checkpoints use
`torch.distributed.checkpoint.state_dict`: full (unsharded) model and optimizer state dicts keyed by
parameter name, gathered to rank 0 on the CPU, and loaded back from a full state on every rank.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

ATTENTION_METHODS = ("q", "kv", "attend")  # Attention methods the drafters call outside `forward`


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Read torchrun's env, start the process group (NCCL on CUDA, Gloo on CPU), pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref.startswith("cuda")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local), device


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


# -- wrapping ---------------------------------------------------------------------------------------
def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)


def shard_fsdp(module: nn.Module, drafter: nn.Module, device: torch.device, world: int) -> nn.Module:
    """FSDP2 in place: per-layer units (attention, MLP), then the root `module`; returns `module`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # `kv` returns views (`.view` of a projection); nothing writes into them in place, which is all the
    # warning is about
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    mesh = init_device_mesh(device.type, (world,))
    for layer in getattr(drafter, "layers", []):
        fully_shard(layer.self_attn, mesh=mesh)
        for name in ATTENTION_METHODS:
            register_fsdp_forward_method(layer.self_attn, name)
        fully_shard(layer.mlp, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def gradient_sync(module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce / reduce-scatter of a micro-batch that is not the step's last."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(module, "no_sync"):  # DDP
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` that also works on FSDP2's sharded (DTensor) gradients: the norm is over all shards."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0, False, True)
    if hasattr(total, "full_tensor"):  # a DTensor: partial norms on every rank, reduced here
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, True)
    return total


# -- state dicts --------------------------------------------------------------------------------------
def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(module: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded (FSDP: on rank 0 only, others get {}; collective)."""
    if not fsdp:
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options())


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict[str, Any]:
    """The optimizer's state (FSDP: full, keyed by parameter name, on rank 0; collective)."""
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_full_options())


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool) -> None:
    """Load what `full_optimizer_state` returned (FSDP: every rank passes the full state; collective)."""
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
