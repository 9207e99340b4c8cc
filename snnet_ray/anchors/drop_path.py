"""Stochastic depth schedules of the anchors' blocks.

timm builds every family with its decay rule: block `i` of `n` drops its residual branch with
probability `rate * i / (n - 1)`, from 0 at the first block to `drop_path_rate` at the last. The
official DeiT III models SN-Netv2 stitches give every block the same rate instead
(`dpr = [drop_path_rate] * depth` in the DeiT III code); `uniform_drop_path` rebuilds an anchor so.
"""

from __future__ import annotations

from torch import nn

from snnet_ray.anchors.base import AnchorAdapter

__all__ = ["uniform_drop_path"]


def uniform_drop_path(anchor: AnchorAdapter, rate: float) -> int:
    """Give every stochastic-depth slot of `anchor`'s blocks the drop probability `rate`.

    timm's blocks keep their residual-branch drop in attributes named `drop_path` (CNNs) or
    `drop_path1`/`drop_path2` (transformers), and put `nn.Identity` (transformers) or None (ResNet
    blocks, which skip a None branch drop) there when the rate is 0: those slots get a `DropPath`
    too. Returns how many slots were set."""
    from timm.layers import DropPath

    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    slots = 0
    for _, _, block in anchor.blocks():
        for module in list(block.modules()):
            for name in ("drop_path", "drop_path1", "drop_path2"):
                current = getattr(module, name, False)
                if current is None or isinstance(current, (DropPath, nn.Identity)):
                    setattr(module, name, DropPath(rate) if rate > 0 else nn.Identity())
                    slots += 1
    return slots
