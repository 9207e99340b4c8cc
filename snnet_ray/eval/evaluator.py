"""Evaluating an SN-Net over validation shards, one shard's counts at a time.

The validation loader yields batches that never mix shards and flags each shard's last batch,
so counts can be reported per (config, shard) as soon as a shard is done. Those partial counts
are what the results service sums into exact accuracies, and what a resumed evaluation skips.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from snnet_ray.eval.one_pass import ConfigCounts, counts_from_tensor, evaluate_batch_tensor
from snnet_ray.precision import PrecisionPolicy
from snnet_ray.stitching import SNNet

__all__ = ["ShardCounts", "evaluate_shards", "to_records", "total_counts"]

log = logging.getLogger(__name__)


@dataclass
class ShardCounts:
    """Every requested config's counts on one complete validation shard."""

    shard: str
    counts: dict[int, ConfigCounts]

    @property
    def samples(self) -> int:
        return next(iter(self.counts.values())).samples if self.counts else 0


@torch.no_grad()
def evaluate_shards(
    model: SNNet,
    batches: Iterable,
    *,
    config_ids: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    precision: PrecisionPolicy | None = None,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[ShardCounts]:
    """Yield `ShardCounts` per completed shard from `ValBatch`es (images, targets, shard, keys, last).

    Every config is evaluated in one pass per batch (`evaluate_batch_tensor`); a shard's counts
    add up on the device and are copied to the host once, when the shard is complete. `precision`
    (the run's `PrecisionPolicy`: bf16 weights on GPUs) casts the model and the images as training
    does; None keeps the model's dtype. Counts are taken from float32 logits.
    """
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    if precision is not None:
        model = precision.cast_model(model, device)
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    pending: dict[str, tuple[list[int], torch.Tensor]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="evaluating", unit="batch", leave=False)
    try:
        for batch in batches:
            images = batch.images.to(device, dtype, non_blocking=True)  # a bf16 model takes bf16 input
            targets = batch.targets.to(device, non_blocking=True)
            ids, counts = evaluate_batch_tensor(model, images, targets, config_ids)
            if batch.shard in pending:
                pending[batch.shard][1].add_(counts)
            else:
                pending[batch.shard] = (ids, counts)
            if bar is not None:
                bar.update(1)
            if batch.last:
                ids, counts = pending.pop(batch.shard)
                yield ShardCounts(batch.shard, counts_from_tensor(ids, counts))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if pending:
        # A shard without its last batch means the loader stopped early: its counts are partial
        # and must not be recorded as a complete shard.
        raise RuntimeError(f"validation ended inside shards {sorted(pending)}; their counts are incomplete")


def total_counts(shards: Iterable[ShardCounts]) -> dict[int, ConfigCounts]:
    """Sum per-shard counts into per-config totals."""
    out: dict[int, ConfigCounts] = defaultdict(ConfigCounts)
    for s in shards:
        for cfg_id, c in s.counts.items():
            out[cfg_id].add(c)
    return dict(out)


def to_records(run: str, checkpoint: str, shard: ShardCounts, worker: str | None = None) -> list:
    """The results-service records of one shard (one per config)."""
    from snnet_ray.results import EvalRecord

    now = time.time()
    return [
        EvalRecord(
            run=run,
            checkpoint=checkpoint,
            config_id=cfg_id,
            shard=shard.shard,
            samples=c.samples,
            top1_correct=c.top1_correct,
            top5_correct=c.top5_correct,
            loss_sum=c.loss_sum if math.isfinite(c.loss_sum) else None,
            worker=worker,
            time=now,
        )
        for cfg_id, c in sorted(shard.counts.items())
    ]
