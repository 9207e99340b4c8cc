"""Every collective snnet-ray runs goes through this module.

NCCL serves CUDA tensors only and gloo CPU tensors only, so a collective must take its tensor on
the device the process group serves for this worker. Keeping every call here (a test greps
`snnet_ray/` for `torch.distributed` collectives elsewhere) makes that rule checkable: callers pass
the tensor and the worker's device, and this module moves it there and back.

Outside a process group (one process, a debugger, a unit test) every function is the identity, so
the same code runs with and without `torch.distributed`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "all_reduce",
    "barrier",
    "broadcast",
    "broadcast_json",
    "default_device",
    "is_distributed",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than zero ranks."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def default_device() -> torch.device:
    """The device this worker's collectives run on: its GPU when the process group serves CUDA
    tensors (NCCL, alone or as in Ray's "cpu:gloo,cuda:nccl"), else the CPU."""
    if is_distributed() and torch.cuda.is_available() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: torch.Tensor, device: torch.device | str | None = None, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` over all ranks (`op`: sum, max, min, avg) on `device`; returns a tensor on the
    caller's device. `device` defaults to the tensor's own."""
    if not is_distributed():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in (*ops, "avg"):
        raise ValueError(f"unknown reduce op {op!r}; use one of sum, max, min, avg")
    work = tensor.to(device) if device is not None else tensor
    dist.all_reduce(work, op=ops.get(op, dist.ReduceOp.SUM))
    if op == "avg":
        work = work / dist.get_world_size()
    return work.to(tensor.device) if work.device != tensor.device else work


def broadcast(tensor: torch.Tensor, src: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Rank `src`'s `tensor` on every rank, on the caller's device."""
    if not is_distributed():
        return tensor
    work = tensor.to(device) if device is not None else tensor
    dist.broadcast(work, src=src)
    return work.to(tensor.device) if work.device != tensor.device else work


def all_gather(tensor: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Every rank's `tensor` stacked along a new first dimension (rank order), on the caller's device."""
    if not is_distributed():
        return tensor.unsqueeze(0)
    work = (tensor.to(device) if device is not None else tensor).contiguous()
    parts = [torch.empty_like(work) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, work)  # the list form: gloo has no all_gather_into_tensor for every dtype
    out = torch.stack(parts)
    return out.to(tensor.device) if out.device != tensor.device else out


def barrier(device: torch.device | str | None = None) -> None:
    """Wait for every rank. With NCCL, `device` names this rank's GPU so no wrong device is used."""
    if not is_distributed():
        return
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        dist.barrier(device_ids=[dev.index if dev.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_json(obj: object, src: int = 0, device: torch.device | str | None = None) -> object:
    """Rank `src`'s JSON-serialisable `obj` (e.g. a list of shard names) on every rank: sent as
    UTF-8 bytes in a uint8 tensor on `device`, so nothing is pickled and NCCL can carry it."""
    if not is_distributed():
        return obj
    import json

    dev = torch.device(device) if device is not None else default_device()
    payload = json.dumps(obj).encode() if rank() == src else b""
    size = broadcast(torch.tensor([len(payload)], dtype=torch.int64, device=dev), src=src)
    data = torch.zeros(int(size.item()), dtype=torch.uint8, device=dev)
    if rank() == src:
        data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    data = broadcast(data, src=src)
    return json.loads(bytes(data.cpu().tolist()).decode())
