"""Weight files: what they hold, read without loading them whole where possible."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["checkpoint_num_classes", "classifier_key"]


def classifier_key(model: nn.Module) -> str | None:
    """The classifier's parameter prefix from timm's pretrained config (e.g. 'head', 'fc')."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    key = cfg.get("classifier")
    if isinstance(key, (list, tuple)):
        key = key[0]
    return key


def checkpoint_num_classes(path: Path, model: nn.Module) -> int | None:
    """Number of classes of the classifier stored in a weights file, or None if it has none.

    timm needs this in `pretrained_cfg_overlay` to know whether the file's head fits the model
    (same classes) or must be dropped (fine-tuning to another label set).
    """
    key = classifier_key(model)
    if key is None:
        return None
    weight = f"{key}.weight"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(weight).get_shape()[0] if weight in f.keys() else None  # noqa: SIM118 (safe_open has no __contains__)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    for name, tensor in state.items():
        if name.removeprefix("module.") == weight:
            return int(tensor.shape[0])
    return None
