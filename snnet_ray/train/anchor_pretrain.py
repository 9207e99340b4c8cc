"""Train small anchors from scratch: the demo's stand-in for a pretrained model family.

SN-Net stitches *pretrained* anchors. The demo has no hub, so it trains its own tiny family on
the digits shards first (a few epochs each, seconds on a CPU) and caches the weights: a rerun
with the same anchors, data and recipe loads the files instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from snnet_ray.data.config import DataConfig

__all__ = ["AnchorRecipe", "ensure_anchor_weights", "train_anchor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnchorRecipe:
    """How each anchor is trained from scratch (plain AdamW + cosine, light augmentation)."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0


def train_anchor(
    name: str,
    kwargs: dict[str, Any],
    timm_kwargs: dict[str, Any],
    data: DataConfig,
    recipe: AnchorRecipe = AnchorRecipe(),
) -> tuple[torch.nn.Module, float]:
    """Train one timm model on the shards' train split; returns (model, validation top-1 %).

    `data` is the SN-Net run's data config: the anchors see the same normalisation and crops
    the SN-Net will; mixup is off and the batch comes from the recipe.
    """
    from snnet_ray.data import build_train_loader, build_val_loader

    torch.manual_seed(recipe.seed)
    model = timm.create_model(name, **{**timm_kwargs, **kwargs})
    data_cfg = data.replace(
        batch_size=recipe.batch_size, num_workers=0, mixup_alpha=0.0, cutmix_alpha=0.0, seed=recipe.seed,
        finish_on_device=False,  # a plain timm loop on the CPU: the workers normalise
    )
    loader = build_train_loader(data_cfg, rank=0, world_size=1)
    total = recipe.epochs * loader.steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    model.train()
    for _ in range(recipe.epochs):
        for images, targets in loader:
            loss = F.cross_entropy(model(images), targets, label_smoothing=data_cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch in build_val_loader(data_cfg, rank=0, world_size=1):
            correct += int((model(batch.images).argmax(-1) == batch.targets).sum())
            seen += len(batch.targets)
    return model, 100.0 * correct / max(seen, 1)


def ensure_anchor_weights(
    anchors: Sequence[tuple[str, dict[str, Any]]],
    timm_kwargs: dict[str, Any],
    data: DataConfig,
    out_dir: str | Path,
    recipe: AnchorRecipe = AnchorRecipe(),
) -> list[Path]:
    """Weight files of every anchor, trained now or found from an earlier run with the same inputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = json.loads((Path(data.root) / "_info.json").read_text())
    paths = []
    for name, kwargs in anchors:
        spec = {
            "name": name,
            "kwargs": kwargs,
            "timm_kwargs": timm_kwargs,
            "recipe": asdict(recipe),
            "data": {**asdict(data), "root": None, "info": info},  # where the shards are does not matter
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = out_dir / f"{name}-{digest}.safetensors"
        if path.is_file():
            log.info("anchor %s: cached weights %s", name, path)
        else:
            model, top1 = train_anchor(name, kwargs, timm_kwargs, data, recipe)
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            tmp.rename(path)
            log.info("anchor %s: trained %d epochs, val top-1 %.1f%% -> %s", name, recipe.epochs, top1, path)
        paths.append(path)
    return paths
