"""Cost of each config: multiply-accumulates (GMACs), parameters and measured latency.

MACs follow the paper's tables: multiply-adds of one image at the anchors' input size
(DeiT-B = 17.6 G), counted with `torch.utils.flop_counter` (FLOPs / 2). Costs are additive over
the pieces a path runs (embedding, stage entries, blocks, stitching layer, final norm and head),
so each piece is counted once per anchor and every config's cost is a sum: no config is run.
Counting uses fake (or meta) tensors, so it allocates nothing and takes well under a second.
Parameters count only the modules on the path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from snnet_ray.anchors.base import AnchorAdapter

__all__ = [
    "AnchorProfile",
    "ConfigCost",
    "flop_counter",
    "measure_latency",
    "path_pieces",
    "profile_anchor",
    "profile_layer",
]


@dataclass(frozen=True)
class ConfigCost:
    """GMACs (multiply-adds / 1e9, one image) and parameter count of one config's path."""

    gmacs: float
    params: int

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def to_dict(self) -> dict:
        return {"gmacs": self.gmacs, "params": self.params}


@dataclass(frozen=True)
class AnchorProfile:
    """Per-piece MACs and parameters of an anchor, and its activation shape in each stage."""

    macs: dict[str, int]
    params: dict[str, int]
    stage_shapes: list[tuple[int, ...]]

    @property
    def total_macs(self) -> int:
        return sum(self.macs.values())

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting the fused CPU attention kernel.

    torch's registry has formulas for the CUDA attention kernels only; on a CPU build the fused
    `_scaled_dot_product_flash_attention_for_cpu` counted zero and a DeiT's cost came out ~14% low
    (every attention score and weighted sum missing). The formula is the same as the CUDA kernels'."""
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: _cpu_attention_flops})


@contextlib.contextmanager
def _shape_only(module: nn.Module):
    """Run `module` without computing: meta tensors if it lives on meta, fake tensors otherwise."""
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        if device.type == "meta":
            with torch.no_grad():
                yield device
        else:
            with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
                yield device
    finally:
        module.train(was_training)


def profile_anchor(adapter: AnchorAdapter, input_size: Sequence[int]) -> AnchorProfile:
    """Count MACs and parameters of each piece of an anchor at `input_size` (C, H, W)."""
    macs: dict[str, int] = {}
    shapes: list[tuple[int, ...]] = []
    counter = flop_counter()
    seen = 0

    def record(key: str) -> None:
        nonlocal seen
        total = counter.get_total_flops()
        macs[key] = (total - seen) // 2
        seen = total

    with _shape_only(adapter) as device, counter:
        x = torch.empty(1, *input_size, device=device)
        x = adapter.embed(x)
        record("embed")
        for s in range(adapter.num_stages):
            x = adapter.enter(s, x)
            record(f"enter.{s}")
            for i, blk in enumerate(adapter.stage_blocks(s)):
                x = blk(x)
                record(f"block.{s}.{i}")
            shapes.append(tuple(x.shape))
        adapter.finish(x)
        record("finish")
    params = {key: sum(p.numel() for p in ps) for key, ps in adapter.piece_parameters().items()}
    return AnchorProfile(macs=macs, params=params, stage_shapes=shapes)


def profile_layer(layer: nn.Module, activation_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) of a stitching layer applied to one image's activation."""
    counter = flop_counter()
    with _shape_only(layer) as device, counter:
        layer(torch.empty(*activation_shape, device=device))
    return counter.get_total_flops() // 2, sum(p.numel() for p in layer.parameters())


def path_pieces(adapter: AnchorAdapter, stage: int, block: int, side: str) -> Iterable[str]:
    """Piece keys a front half ('front': up to and including `block`) or back half runs."""
    if side == "front":
        yield "embed"
        for s in range(stage):
            yield f"enter.{s}"
            yield from (f"block.{s}.{i}" for i in range(adapter.stage_depths[s]))
        yield f"enter.{stage}"
        yield from (f"block.{stage}.{i}" for i in range(block + 1))
    else:
        yield from (f"block.{stage}.{i}" for i in range(block, adapter.stage_depths[stage]))
        for s in range(stage + 1, adapter.num_stages):
            yield f"enter.{s}"
            yield from (f"block.{s}.{i}" for i in range(adapter.stage_depths[s]))
        yield "finish"


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    config_ids: Iterable[int],
    batch_size: int = 64,
    warmup: int = 2,
    iters: int = 5,
) -> dict[int, float]:
    """Median forward latency in ms of each config of an SNNet at `batch_size`, on its device."""
    device = next(model.parameters()).device
    input_size = model.input_size
    x = torch.randn(batch_size, *input_size, device=device)
    was_training, selected = model.training, model.selected
    model.eval()
    out: dict[int, float] = {}
    try:
        for cfg_id in config_ids:
            model.select(cfg_id)
            times = []
            for i in range(warmup + iters):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
            out[cfg_id] = sorted(times)[len(times) // 2]
    finally:
        model.train(was_training)
        model.select(selected)
    return out
