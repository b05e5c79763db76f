"""Process-group plumbing for ``torchrun`` (DDP): gloo on the CPU, NCCL on CUDA.

``torchrun --nproc_per_node=N experiments/run.py ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them (``init_method="env://"``). Without them (or with
``WORLD_SIZE=1``) everything runs in one process and the collectives below are no-ops.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, List

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "resolve_device", "all_reduce_sum", "broadcast_object", "barrier",
           "cleanup"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``."""
    device = (device or "auto").lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


_CONTEXT: DistContext | None = None


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by the environment (idempotent).

    Picks NCCL when the device is CUDA and gloo otherwise, and pins CUDA processes to
    ``cuda:<LOCAL_RANK>``.
    """
    global _CONTEXT
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    dev = resolve_device(device, local_rank)
    if _CONTEXT is not None and dist.is_available() and dist.is_initialized():
        return DistContext(_CONTEXT.rank, _CONTEXT.world_size, _CONTEXT.local_rank, _CONTEXT.local_world_size,
                           dev, _CONTEXT.backend)
    backend = ""
    if world > 1:
        if not dist.is_available():  # pragma: no cover - depends on the torch build
            raise RuntimeError("torch.distributed is not available in this build")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    _CONTEXT = DistContext(rank, world, local_rank, local_world, dev, backend)
    return _CONTEXT


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (no-op in a single process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (pickled; for small values such as paths)."""
    if not _active():
        return obj
    box: List[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if any)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def wrap_ddp(net: torch.nn.Module, device: torch.device, ignore: Iterable[str] = ()) -> torch.nn.Module:
    """``net`` in :class:`~torch.nn.parallel.DistributedDataParallel`, the parameters ``ignore`` left out.

    The ignored parameters (the entropy bottleneck's ``quantiles``) get no gradient from
    the main loss and are fitted per process by the aux loss.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

    DDP._set_params_and_buffers_to_ignore_for_model(net, list(ignore))
    ids = [device.index] if device.type == "cuda" else None
    # depthwise-conv gradients can come with other strides than DDP's buckets: harmless, silenced
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # static_graph: the same parameters are used at every step; it also copes with unused ones.
    # No buffer needs syncing in a forward (no batch norm).
    return DDP(net, device_ids=ids, static_graph=True, forward_sync_buffers=False)
