"""Multi-process training with torch.distributed, as launched by `torchrun`.

`torchrun --nproc_per_node N -m pitscope.cli train ...` (or the `pitscope` script) starts N
processes with RANK, LOCAL_RANK and WORLD_SIZE in their environment; `context()` reads them.
Without them the run is a single process and nothing here does anything. Gloo is the backend
on the CPU, NCCL on CUDA (one GPU per process, chosen by LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank in [0, world_size); rank 0 writes every file."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def context() -> DistContext:
    """The launch as torchrun describes it in the environment (a single process if it does not)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a valid launch")
    return DistContext(rank=rank, world_size=world_size, local_rank=_env_int("LOCAL_RANK", rank))


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun; returns (context, this process's device).

    On CUDA each process takes the GPU of its LOCAL_RANK. Calling it again is harmless.
    """
    ctx = context()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of numbers over all processes (the numbers unchanged without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over all processes (the flags unchanged without a group).

    Every process must stop at the same step or the others wait forever in the next all-reduce,
    so a budget or a NaN seen by one process stops them all.
    """
    return [bool(v) for v in max_over_ranks([float(f) for f in flags], device)]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics, which each process
    updates from its own shard); parameters already agree through the averaged gradients."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def teardown() -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
