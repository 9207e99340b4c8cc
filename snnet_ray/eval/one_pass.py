"""One pass evaluates every config of an SN-Net.

Evaluating config by config decodes every validation image once per config and reruns each
front anchor's prefix for every stitch that starts from it. Here each batch is decoded once;
each anchor runs once, keeping the activations at the cut points that any requested stitch
needs (and its own logits when the anchor itself is requested); every stitch then branches
from the saved activation: stitching layer, then the back anchor's suffix. Stitches that share
a stitching layer and a front cut share the stitching layer's output too.

The counts are exactly those of config-by-config evaluation: the same modules run on the same
inputs in the same order; only repeated prefix work and decoding are saved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from snnet_ray.stitching import SNNet

__all__ = ["ConfigCounts", "count_predictions", "evaluate_batch", "evaluate_batch_by_config"]


@dataclass
class ConfigCounts:
    """Partial evaluation counts of one config: exact, summable across batches, shards, ranks."""

    samples: int = 0
    top1_correct: int = 0
    top5_correct: int = 0
    loss_sum: float = 0.0

    def add(self, other: ConfigCounts) -> None:
        self.samples += other.samples
        self.top1_correct += other.top1_correct
        self.top5_correct += other.top5_correct
        self.loss_sum += other.loss_sum

    @property
    def top1(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * self.top1_correct / max(self.samples, 1)

    @property
    def top5(self) -> float:
        return 100.0 * self.top5_correct / max(self.samples, 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


@dataclass
class _Cuts:
    """Activations one anchor must keep: per stage, the block indices after which stitches cut."""

    blocks: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    logits: bool = False


def count_predictions(logits: torch.Tensor, labels: torch.Tensor) -> ConfigCounts:
    """Top-1/top-5 correct counts and summed cross-entropy of one batch."""
    logits = logits.float()
    k = min(5, logits.shape[-1])
    topk = logits.topk(k, dim=-1).indices
    hits = topk == labels[:, None]
    return ConfigCounts(
        samples=int(labels.numel()),
        top1_correct=int(hits[:, 0].sum()),
        top5_correct=int(hits.any(dim=-1).sum()),
        loss_sum=float(F.cross_entropy(logits, labels, reduction="sum")),
    )


@torch.no_grad()
def evaluate_batch(
    model: SNNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    config_ids: Sequence[int] | None = None,
) -> dict[int, ConfigCounts]:
    """Counts of every requested config (default: all) on one batch, in one pass."""
    ids = list(range(len(model.configs))) if config_ids is None else list(config_ids)
    cuts: dict[int, _Cuts] = defaultdict(_Cuts)
    for cfg_id in ids:
        cfg = model.configs[cfg_id]
        if cfg.is_anchor:
            cuts[cfg.anchors[0]].logits = True
        else:
            cuts[cfg.anchors[0]].blocks[cfg.stage].add(cfg.positions[0][0])

    saved: dict[tuple[int, int, int], torch.Tensor] = {}  # (anchor, stage, block) -> activation
    logits_by_id: dict[int, torch.Tensor] = {}
    for anchor_idx in sorted(cuts):
        want = cuts[anchor_idx]
        anchor = model.anchors[anchor_idx]
        last_stage = anchor.num_stages - 1 if want.logits else max(want.blocks)
        x = anchor.embed(images)
        for s in range(last_stage + 1):
            x = anchor.enter(s, x)
            keep = want.blocks.get(s, set())
            last_block = anchor.stage_depths[s] - 1 if (want.logits or s < last_stage) else max(keep)
            for i, blk in enumerate(anchor.stage_blocks(s)[: last_block + 1]):
                x = blk(x)
                if i in keep:
                    saved[(anchor_idx, s, i)] = x
        if want.logits:
            logits_by_id[anchor_idx] = anchor.finish(x)

    stitched: dict[tuple[int, int], torch.Tensor] = {}  # (layer, front block) -> stitching output
    for cfg_id in ids:
        cfg = model.configs[cfg_id]
        if cfg.is_anchor:
            continue
        (front, back), (j, l) = cfg.anchors[:2], cfg.positions[0]
        key = (cfg.layer, j)
        if key not in stitched:
            stitched[key] = model.stitch_layers[cfg.layer](saved[(front, cfg.stage, j)])
        if len(cfg.anchors) > 2:  # SN-Netv2 round trip: shares its first switch, runs its own tail
            logits_by_id[cfg_id] = model.continue_route(stitched[key], cfg_id)
            continue
        logits_by_id[cfg_id] = model.anchors[back].forward_from(stitched[key], cfg.stage, l)

    return {cfg_id: count_predictions(logits_by_id[cfg_id], labels) for cfg_id in ids}


@torch.no_grad()
def evaluate_batch_by_config(
    model: SNNet, images: torch.Tensor, labels: torch.Tensor, config_ids: Iterable[int] | None = None
) -> dict[int, ConfigCounts]:
    """The reference: each config run on its own (what the one-pass result must equal)."""
    ids = range(len(model.configs)) if config_ids is None else config_ids
    return {cfg_id: count_predictions(model.forward_config(images, cfg_id), labels) for cfg_id in ids}
