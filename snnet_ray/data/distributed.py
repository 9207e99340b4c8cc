"""This process's rank and the world size, for splitting data over the data-parallel group.

The loaders take `rank` and `world_size` as arguments; when they are not given they come from,
in order: the Ray Train context (inside a `trainer.fit()` worker), an initialised
`torch.distributed` process group, the `RANK`/`WORLD_SIZE` environment variables (torchrun,
DeepSpeed launcher), and finally a single process (0, 1).
"""

from __future__ import annotations

import os
import sys

__all__ = ["rank_and_world_size"]


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the given values, else the first source above that knows them."""
    if rank is None or world_size is None:
        found = _from_ray_train() or _from_torch_distributed() or _from_env() or (0, 1)
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _from_ray_train() -> tuple[int, int] | None:
    if "ray" not in sys.modules:  # Ray Train workers have imported Ray; never pay its import here
        return None
    try:
        import ray.train

        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size()
    except (RuntimeError, ValueError, AttributeError, ImportError):
        return None  # not inside a Ray Train training function


def _from_torch_distributed() -> tuple[int, int] | None:
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _from_env() -> tuple[int, int] | None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
