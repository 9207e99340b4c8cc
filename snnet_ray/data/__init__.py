"""Data: webdataset shards (ImageNet-style folders, the digits demo set) and the train/val pipelines.

Writing: `write_imagefolder_shards`, `write_digits_shards` -> `{split}-{000000..}.tar` + `_info.json`
(timm's `wds/` reader accepts it). Reading: `read_info`, `DataConfig`, `build_train_loader` (same
step count on every rank, resampled shards), `build_val_loader` (exact: every sample once).

Names are imported on first use, so the shard writer's worker processes and `snnet-ray --help`
do not pay for torch and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CorruptShardError",
    "DataConfig",
    "DatasetInfo",
    "ImageRecord",
    "ShardSummary",
    "SplitInfo",
    "TrainLoader",
    "ValBatch",
    "ValLoader",
    "build_mixup",
    "build_train_loader",
    "build_train_transform",
    "build_val_loader",
    "build_val_transform",
    "open_url",
    "rank_and_world_size",
    "read_info",
    "steps_per_epoch",
    "write_digits_shards",
    "write_imagefolder_shards",
    "write_shards",
]

_WHERE = {
    "CorruptShardError": "samples",
    "DataConfig": "config",
    "DatasetInfo": "info",
    "ImageRecord": "shards",
    "ShardSummary": "shards",
    "SplitInfo": "info",
    "TrainLoader": "pipeline",
    "ValBatch": "pipeline",
    "ValLoader": "pipeline",
    "build_mixup": "transforms",
    "build_train_loader": "pipeline",
    "build_train_transform": "transforms",
    "build_val_loader": "pipeline",
    "build_val_transform": "transforms",
    "open_url": "storage",
    "rank_and_world_size": "distributed",
    "read_info": "info",
    "steps_per_epoch": "pipeline",
    "write_digits_shards": "digits",
    "write_imagefolder_shards": "imagefolder",
    "write_shards": "shards",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .config import DataConfig
    from .digits import write_digits_shards
    from .distributed import rank_and_world_size
    from .imagefolder import write_imagefolder_shards
    from .info import DatasetInfo, SplitInfo, read_info
    from .pipeline import TrainLoader, ValBatch, ValLoader, build_train_loader, build_val_loader, steps_per_epoch
    from .samples import CorruptShardError
    from .shards import ImageRecord, ShardSummary, write_shards
    from .storage import open_url
    from .transforms import build_mixup, build_train_transform, build_val_transform
