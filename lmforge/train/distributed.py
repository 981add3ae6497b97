"""Devices and scale-out: one process, DDP, or FSDP2, chosen from torchrun's environment.

Under `torchrun --nproc_per_node=N` (RANK / WORLD_SIZE / LOCAL_RANK set) the process group is
initialised (gloo on CPU, nccl on CUDA) and the model wrapped in DistributedDataParallel, or sharded
with FSDP2 (`fully_shard` per transformer block, then the root) for `strategy=fsdp`. Checkpoints are
always full, unsharded state dicts, so a checkpoint written by N processes resumes in one and back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmforge.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not available is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device '{requested}' (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{requested}' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{requested}' requested but MPS is not available")
    return device


def init_distributed(requested_device: str, strategy: str) -> tuple[DistInfo, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if strategy in ("ddp", "fsdp"):
            # One process: nothing to shard or replicate; the same code path runs unwrapped.
            pass
        return DistInfo(), pick_device(requested_device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    chosen = "fsdp" if strategy == "fsdp" else "ddp"
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, strategy=chosen), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if info.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (the largest nn.ModuleList in the model)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "_orig_mod", model)  # torch.compile
    inner = getattr(inner, "module", inner)  # DDP
    return getattr(inner, "_orig_mod", inner)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, info: DistInfo, last_micro_step: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on accumulation micro-steps; FSDP2 defers via set flags."""
    if info.strategy == "ddp" and not last_micro_step:
        with model.no_sync():  # type: ignore[operator]
            yield
        return
    if info.strategy == "fsdp":
        model.set_requires_gradient_sync(last_micro_step)  # type: ignore[operator]
    yield


def full_model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (gathered from every rank under FSDP)."""
    if info.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts)
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """The optimizer state, unsharded and keyed by parameter name, so any world size can load it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(_dcp_module(model, info), optimizer, options=opts)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, info: DistInfo
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_optimizer_state_dict(_dcp_module(model, info), optimizer, state, options=opts)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], info: DistInfo) -> None:
    """Load a full state dict into a (possibly wrapped or sharded) model."""
    if info.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(state)


def _dcp_module(model: nn.Module, info: DistInfo) -> nn.Module:
    return model if info.strategy == "fsdp" else unwrap(model)
