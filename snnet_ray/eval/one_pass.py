"""One pass evaluates every config of an SN-Net.

Evaluating config by config decodes every validation image once per config and reruns each
front anchor's prefix for every stitch that starts from it. Here each batch is decoded once, and
each anchor's blocks are *walked once*:

- the anchor's own stream (its embedding output) runs when the anchor is requested or is the
  front of a requested stitch; its activations at the stitches' cut points are kept;
- every stitch into this anchor (as the back anchor) is a stream that *joins* the walk when the
  walk reaches its first back block: the stitching layer's output on the front's kept activation
  is concatenated to the running batch, and from there on one block call serves every stream
  that has joined (grouped by (back anchor, first back block));
- at the end, the final norm and head run once over all streams, and each stream's rows give
  its config's counts.

So a batch costs one call per block of each anchor and stream group, at the same multiply-adds:
the work left is exactly the MACs bound (prefixes shared, suffixes not). `max_streams` caps how many
streams walk together (activation memory grows with it); more streams than that walk in several
groups, each a walk of its own. DeiT-Ti/S/B (71 configs): 36 block calls per batch with every stream
in one group, 54 with the default `max_streams=16`, against 221 when each stitch runs its own suffix
and 920 config by config.

Counts stay on the device: one (configs, 4) tensor per batch (`evaluate_batch_tensor`), copied to
the host once. They equal config-by-config evaluation (the same modules on the same rows; top-1 and
top-5 counts are identical, summed losses agree to float rounding).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from snnet_ray.stitching import SNNet

__all__ = [
    "ConfigCounts",
    "count_predictions",
    "counts_from_tensor",
    "evaluate_batch",
    "evaluate_batch_by_config",
    "evaluate_batch_tensor",
]


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
    max_streams: int = 16,
) -> dict[int, ConfigCounts]:
    """Counts of every requested config (default: all) on one batch, in one pass (one host copy)."""
    ids, counts = evaluate_batch_tensor(model, images, labels, config_ids, max_streams)
    return counts_from_tensor(ids, counts)


def counts_from_tensor(ids: Sequence[int], counts: torch.Tensor) -> dict[int, ConfigCounts]:
    """`ConfigCounts` per config from an (n, 4) tensor of (samples, top-1, top-5, loss sum) rows."""
    rows = counts.tolist()  # the one device -> host copy
    return {
        cfg_id: ConfigCounts(samples=int(n), top1_correct=int(t1), top5_correct=int(t5), loss_sum=float(loss))
        for cfg_id, (n, t1, t5, loss) in zip(ids, rows)
    }


@torch.no_grad()
def evaluate_batch_tensor(
    model: SNNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    config_ids: Sequence[int] | None = None,
    max_streams: int = 16,
) -> tuple[list[int], torch.Tensor]:
    """(config ids, float64 (n, 4) counts on the device): samples, top-1, top-5, summed loss."""
    if max_streams < 1:
        raise ValueError(f"max_streams must be >= 1, got {max_streams}")
    ids = list(range(len(model.configs))) if config_ids is None else [int(c) for c in config_ids]
    row_of = {cfg_id: k for k, cfg_id in enumerate(ids)}
    counts = torch.zeros(len(ids), 4, dtype=torch.float64, device=images.device)
    wanted = set(ids)
    # cut points each front anchor keeps: (stage, block)
    cuts: dict[int, set[tuple[int, int]]] = defaultdict(set)
    into: dict[int, list[_Stream]] = defaultdict(list)  # back anchor -> stitch streams
    # Configs run after the walks by `model.forward_stitched`, sharing only the front prefix:
    # multi-hop paths (official nearest=False Ti->S->B, SN-Netv2's LSL/SLS round trips) and
    # large -> small stitches (SN-Netv2's LS), whose back anchor is walked before its front.
    hops: list[int] = []
    for cfg_id in ids:
        cfg = model.configs[cfg_id]
        if not cfg.is_anchor:
            front, (j, l) = cfg.anchors[0], cfg.positions[0]
            cuts[front].add((cfg.stage, j))
            if cfg.num_hops > 1 or front > cfg.anchors[-1]:
                hops.append(cfg_id)
            else:
                into[cfg.anchors[-1]].append(_Stream(cfg_id, (cfg.stage, l), (front, cfg.stage, j), cfg.layer))
    saved: dict[tuple[int, int, int], torch.Tensor] = {}  # (anchor, stage, block) -> activation
    stitched: dict[tuple[int, int], torch.Tensor] = {}  # (layer, front block) -> stitching output
    batch = images.shape[0]
    for a in range(len(model.anchors)):
        own = a in wanted or bool(cuts[a])
        streams = ([_Stream(a, (0, -1), None, None)] if own else []) + sorted(into[a], key=lambda t: t.entry)
        for start in range(0, len(streams), max_streams):
            group = streams[start : start + max_streams]
            keep = cuts[a] if start == 0 else set()  # the own stream walks in the first group
            logits, rows = _walk(model, a, group, images, keep, saved, stitched, a in wanted)
            if logits is not None:
                _count(logits, labels, [row_of[s.cfg_id] for s in rows], counts, batch)
    for cfg_id in hops:
        cfg = model.configs[cfg_id]
        logits = model.forward_stitched(saved[(cfg.anchors[0], cfg.stage, cfg.positions[0][0])], cfg)
        _count(logits, labels, [row_of[cfg_id]], counts, batch)
    return ids, counts


@dataclass
class _Stream:
    """A path through an anchor's blocks: the anchor's own (entry (0, -1)) or a stitch's suffix."""

    cfg_id: int
    entry: tuple[int, int]  # (stage, first block) where the stream joins the walk
    source: tuple[int, int, int] | None  # front activation (anchor, stage, block) it starts from
    layer: int | None  # stitching layer


def _walk(
    model: SNNet,
    a: int,
    group: list[_Stream],
    images: torch.Tensor,
    cuts: set[tuple[int, int]],
    saved: dict[tuple[int, int, int], torch.Tensor],
    stitched: dict[tuple[int, int], torch.Tensor],
    own_logits: bool,
) -> tuple[torch.Tensor | None, list[_Stream]]:
    """Walk anchor `a`'s blocks once for `group`; returns logits of the streams that need them
    (rows stacked in the returned streams' order) after keeping the own stream's cut activations."""
    anchor = model.anchors[a]
    batch = images.shape[0]
    joining: dict[tuple[int, int], list[_Stream]] = defaultdict(list)
    for st in group:
        joining[st.entry].append(st)
    has_own = bool(joining.get((0, -1)))
    last_cut = max(cuts) if cuts else None
    running: list[_Stream] = list(joining.get((0, -1), []))
    x = anchor.embed(images) if has_own else None
    for s in range(anchor.num_stages):
        if x is not None:
            x = anchor.enter(s, x)
        for i, blk in enumerate(anchor.stage_blocks(s)):
            new = joining.get((s, i), [])
            if new:
                parts = [] if x is None else [x]
                for st in new:
                    front, fs, j = st.source
                    key = (st.layer, j)
                    if key not in stitched:
                        stitched[key] = model.stitch_layers[st.layer](saved[(front, fs, j)])
                    parts.append(stitched[key])
                x = torch.cat(parts) if len(parts) > 1 else parts[0]
                running += new
            if x is None:
                continue
            x = blk(x)
            if has_own and (s, i) in cuts:
                saved[(a, s, i)] = x[:batch]
            if has_own and not own_logits and (s, i) == last_cut:
                # the own stream was only walked for its cut points: drop its rows
                x, running, has_own = (x[batch:] if len(running) > 1 else None), running[1:], False
    if x is None or not running:
        return None, []
    # The anchor's own stream always runs the final norm; a stitch runs it unless `final_norm="v1"`.
    norms = [st.source is None or model.stitch_final_norm(model.configs[st.cfg_id]) for st in running]
    if all(n == norms[0] for n in norms):
        return anchor.finish(x, norm=norms[0]), running
    return torch.cat([anchor.finish(part, norm=n) for part, n in zip(x.split(batch), norms)]), running


def _count(logits: torch.Tensor, labels: torch.Tensor, rows: list[int], counts: torch.Tensor, batch: int) -> None:
    """Add (samples, top-1, top-5, loss sum) of each stream's `batch` rows of `logits` to `counts`."""
    logits = logits.float().view(len(rows), batch, -1)
    k = min(5, logits.shape[-1])
    hits = logits.topk(k, dim=-1).indices == labels.view(1, -1, 1)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat(len(rows)), reduction="none").view(len(rows), batch)
    stats = torch.stack(
        [
            torch.full((len(rows),), float(batch), device=logits.device, dtype=torch.float64),
            hits[..., 0].sum(dim=1).double(),
            hits.any(dim=-1).sum(dim=1).double(),
            loss.sum(dim=1).double(),
        ],
        dim=1,
    )
    counts.index_add_(0, torch.tensor(rows, device=counts.device), stats)


@torch.no_grad()
def evaluate_batch_by_config(
    model: SNNet, images: torch.Tensor, labels: torch.Tensor, config_ids: Iterable[int] | None = None
) -> dict[int, ConfigCounts]:
    """The reference: each config run on its own (what the one-pass result must equal)."""
    ids = range(len(model.configs)) if config_ids is None else config_ids
    return {cfg_id: count_predictions(model.forward_config(images, cfg_id), labels) for cfg_id in ids}
