"""Train and validation loaders over webdataset shards, split over ranks and DataLoader workers.

Train: every rank runs the same number of steps per epoch, `steps_per_epoch`, fixed in advance from
`_info.json` (samples per epoch // (world_size x batch_size)), so no rank ever waits in a
collective for one that ran out of data, however unevenly the shards are sized. Shards are
*resampled*: each DataLoader worker (global index g of G = world_size x num_workers) reads every
G-th shard of an endless sequence of seeded permutations of the shard list, so every shard is read
about equally often and no worker ever runs dry; `with_epoch` cuts each worker's stream at its share
of the steps. Samples pass a shuffle buffer, are decoded and augmented (timm), and batched inside
the workers. With `finish_on_device` (the default) batches leave as uint8 NCHW, from pinned memory,
and `DeviceFinisher` normalises, erases and mixes them on the device; otherwise the workers do
that too (timm `Mixup`, soft targets). With `decode_on_device` the workers ship JPEG bytes.

Validation is exact: every sample of the chosen shards is read exactly once over all ranks and
workers - shard i goes to rank i mod world_size, and within a rank to one DataLoader worker - with
no resampling and no padding, so ranks may see different counts and evaluation sums them. Batches
never mix shards and say which shard they hold and whether it is the shard's last batch, so
evaluation can record counts per shard and resume by skipping shards already recorded.

Labels are checked against `num_classes` of `_info.json` as samples are read: a label outside
[0, num_classes) would index past the classifier (a device-side assert on GPU, far from its cause).
Training skips and counts such a sample, naming shard and key; validation stops with
`CorruptShardError` naming them, since its accuracies must be exact.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .config import DataConfig
from .distributed import rank_and_world_size
from .images import DECODE_ERRORS, decode_image
from .info import DatasetInfo, read_info
from .samples import CorruptShardError, Sample, SkipLog, read_samples
from .storage import local_path, url_exists
from .transforms import build_mixup, build_train_transform, build_val_transform

__all__ = [
    "TrainLoader",
    "ValBatch",
    "ValLoader",
    "build_train_loader",
    "build_val_loader",
    "steps_per_epoch",
]

_logger = logging.getLogger(__name__)

# A worker that sees this many unreadable shards or images in a row is reading a broken data set,
# not a few bad files: stop instead of resampling forever.
_MAX_EMPTY_SHARDS_IN_A_ROW = 100
_MAX_BAD_IMAGES_IN_A_ROW = 1000


class ValBatch(NamedTuple):
    """A validation batch: images and labels of one shard."""

    images: torch.Tensor
    targets: torch.Tensor
    shard: str  # shard file name, e.g. 'val-000003.tar'
    keys: tuple[str, ...]
    last: bool  # the shard's last batch: the shard is complete once this batch is counted


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Optimiser steps per epoch on every rank: whole global batches in `num_samples`."""
    steps = num_samples // (batch_size * world_size)
    if steps < 1:
        raise ValueError(
            f"{num_samples} training samples do not fill one step of {world_size} ranks x {batch_size} "
            f"images; lower batch_size or set samples_per_epoch"
        )
    return steps


def build_train_loader(
    cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None, epoch: int = 0
) -> TrainLoader:
    """The training loader of this rank: `steps_per_epoch` batches of (images, targets) per epoch.

    Targets are class indices, or soft targets (batch, num_classes) when mixup/cutmix is on.
    Rank and world size default to the Ray Train / torch.distributed / environment values.
    """
    rank, world_size = rank_and_world_size(rank, world_size)
    info = read_info(cfg.root)
    split = info.split(cfg.train_split)
    urls = info.urls(cfg.train_split)
    if split.num_samples == 0:
        raise ValueError(f"split '{cfg.train_split}' of {cfg.root} holds no samples")
    _check_shards_exist(urls)
    steps = steps_per_epoch(cfg.samples_per_epoch or split.num_samples, cfg.batch_size, world_size)
    dataset = _TrainDataset(cfg, info, urls, rank, world_size, steps)
    return TrainLoader(dataset, epoch)


def build_val_loader(
    cfg: DataConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    shards: Sequence[str] | None = None,
) -> ValLoader:
    """The validation loader of this rank: `ValBatch`es covering its share of `shards` exactly once.

    `shards` (file names from `_info.json`) restricts evaluation to a subset, e.g. the shards a
    resumed evaluation has not recorded yet; default: every shard of the split.
    """
    rank, world_size = rank_and_world_size(rank, world_size)
    info = read_info(cfg.root)
    split = info.split(cfg.val_split)
    names = list(split.filenames)
    if shards is not None:
        unknown = sorted(set(shards) - set(names))
        if unknown:
            raise ValueError(
                f"shards {unknown[:5]} are not in split '{cfg.val_split}' of {cfg.root}; "
                f"its shards are listed in {cfg.root}/_info.json"
            )
        wanted = set(shards)
        names = [n for n in names if n in wanted]  # _info.json order, so every rank splits alike
    mine = names[rank::world_size]
    url_of = dict(zip(split.filenames, info.urls(cfg.val_split)))
    urls = [url_of[n] for n in mine]
    _check_shards_exist(urls)
    lengths = {u: split.length_of(n) for u, n in zip(urls, mine)}
    dataset = _ValDataset(cfg, urls, lengths, info.num_classes)
    return ValLoader(dataset, [split.length_of(n) for n in mine], mine)


class TrainLoader:
    """Iterating gives one epoch of exactly `steps_per_epoch` batches; the epoch then advances.

    `set_epoch(e)` (or `epoch=` when building) chooses the epoch, e.g. when resuming: shard order,
    shuffling and augmentation are seeded by (seed, epoch, rank, worker), so an epoch is repeatable.
    """

    def __init__(self, dataset: _TrainDataset, epoch: int = 0) -> None:
        self.dataset = dataset
        self.epoch = epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset.steps

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def skipped(self) -> int:
        """Samples, shards and images skipped as unreadable on this rank so far."""
        return self.dataset.skips.count

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.dataset.cfg
        self.dataset.epoch = self.epoch
        generator = torch.Generator()
        # Workers seed random, numpy and torch from this: distinct augmentation per rank and epoch,
        # whatever the trainer did to torch's RNG. (With num_workers=0 the trainer's RNGs are used.)
        generator.manual_seed(_seed("augment", cfg.seed, self.epoch, self.dataset.rank))
        loader = DataLoader(
            self.dataset,
            batch_size=None,  # workers batch (and mix) themselves
            num_workers=cfg.workers,
            pin_memory=_pin(cfg) and not cfg.decode_on_device,
            generator=generator,
            prefetch_factor=cfg.prefetch_factor if cfg.workers > 0 else None,
        )
        self.epoch += 1
        return _iterate(iter(loader))  # workers start now, with this epoch


class ValLoader:
    """Iterating gives this rank's `ValBatch`es; `num_samples` and `shards` say what it covers."""

    def __init__(self, dataset: _ValDataset, lengths: list[int], shards: list[str]) -> None:
        self.dataset = dataset
        self.shards = shards
        self.num_samples = sum(lengths)
        self._num_batches = sum(math.ceil(n / dataset.cfg.eval_batch_size) for n in lengths)

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[ValBatch]:
        cfg = self.dataset.cfg
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=min(cfg.workers, len(self.shards)),  # idle workers would only cost start-up
            pin_memory=_pin(cfg),
            prefetch_factor=cfg.prefetch_factor if cfg.workers > 0 and self.shards else None,
        )
        return _iterate(iter(loader))


# --- datasets (run inside DataLoader workers) ---------------------------------------------------


class _TrainDataset(IterableDataset):
    def __init__(
        self, cfg: DataConfig, info: DatasetInfo, urls: list[str], rank: int, world_size: int, steps: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.urls = urls
        self.lengths = dict(zip(urls, info.split(cfg.train_split).shard_lengths))
        self.num_classes = info.num_classes
        self.rank = rank
        self.world_size = world_size
        self.steps = steps
        self.epoch = 0
        self.skips = SkipLog()
        # Built here, in the training process, so that forked DataLoader workers inherit timm
        # already imported instead of importing it again every epoch.
        self.transform = build_train_transform(cfg)
        self.mixup = None if cfg.finish_on_device else build_mixup(cfg, info.num_classes)

    def __iter__(self) -> Iterator[Any]:
        cfg = self.cfg
        worker, workers = _worker()
        index, count = self.rank * workers + worker, self.world_size * workers
        # This worker's share of the rank's steps; the shares add up to exactly `steps`.
        nbatches = self.steps // workers + (1 if worker < self.steps % workers else 0)
        if nbatches == 0:
            return iter(())
        pipeline = wds.DataPipeline(
            partial(_endless_shards, self.urls, cfg.seed, self.epoch, index, count),
            partial(_read_train_samples, lengths=self.lengths, skips=self.skips, num_classes=self.num_classes),
            partial(_repeat, times=cfg.repeated_aug) if cfg.repeated_aug > 1 else None,
            wds.shuffle(
                cfg.shuffle_buffer,
                cfg.shuffle_initial,
                rng=random.Random(_seed("shuffle", cfg.seed, self.epoch, self.rank, worker)),
            ),
            partial(_encoded_train, skips=self.skips)
            if cfg.decode_on_device
            else partial(_decode_train, transform=self.transform, skips=self.skips),
            wds.batched(
                cfg.batch_size, collation_fn=_collate_encoded if cfg.decode_on_device else _collate, partial=False
            ),
            partial(_mix, mixup=self.mixup) if self.mixup is not None else None,
        )
        return iter(pipeline.with_epoch(nbatches))


class _ValDataset(IterableDataset):
    def __init__(self, cfg: DataConfig, urls: list[str], lengths: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.urls = urls
        self.lengths = lengths
        self.num_classes = num_classes
        self.transform = build_val_transform(cfg)  # in the parent: workers inherit timm imported

    def __iter__(self) -> Iterator[ValBatch]:
        worker, workers = _worker()
        urls = self.urls[worker::workers]
        samples = _labels_in_range(read_samples(urls, strict=True, expected=self.lengths), self.num_classes)
        decoded = _decode_val(samples, self.transform)
        return _batches_by_shard(decoded, self.cfg.eval_batch_size)


# --- pipeline stages --------------------------------------------------------------------------


def _endless_shards(urls: list[str], seed: int, epoch: int, index: int, count: int) -> Iterator[str]:
    """Every `count`-th draw, from `index`, of an endless sequence of seeded shard permutations."""

    def draws() -> Iterator[str]:
        for round_ in itertools.count():
            order = list(urls)
            random.Random(_seed("shards", seed, epoch, round_)).shuffle(order)
            yield from order

    return itertools.islice(draws(), index, None, count)


def _read_train_samples(
    urls: Iterable[str], *, lengths: dict[str, int], skips: SkipLog, num_classes: int
) -> Iterator[Sample]:
    empty = 0
    for url in urls:
        got = 0
        for sample in read_samples([url], strict=False, expected=lengths, skips=skips):
            if not 0 <= sample.label < num_classes:
                skips.skip(f"sample {sample.key}", sample.shard, _label_problem(sample.label, num_classes))
                continue
            got += 1
            yield sample
        empty = 0 if got else empty + 1
        if empty >= _MAX_EMPTY_SHARDS_IN_A_ROW:
            raise RuntimeError(f"{empty} shards in a row held no readable sample (the last: {url})")


def _labels_in_range(samples: Iterable[Sample], num_classes: int) -> Iterator[Sample]:
    for s in samples:
        if not 0 <= s.label < num_classes:
            raise CorruptShardError(f"shard {s.shard}, key {s.key}: {_label_problem(s.label, num_classes)}")
        yield s


def _label_problem(label: int, num_classes: int) -> str:
    return (f"label {label} is outside [0, {num_classes}) (num_classes in _info.json); "
            "fix the .cls member or write the shards again")


def _repeat(samples: Iterable[Sample], *, times: int) -> Iterator[Sample]:
    """Repeated augmentation: each encoded sample `times` times; decoding augments every copy anew,
    and the shuffle buffer after this stage spreads the copies over different batches."""
    for s in samples:
        for _ in range(times):
            yield s


def _decode_train(
    samples: Iterable[Sample], *, transform: Callable, skips: SkipLog
) -> Iterator[tuple[torch.Tensor, int]]:
    bad = 0
    for s in samples:
        try:
            image = decode_image(s.image)
        except DECODE_ERRORS as err:
            skips.skip(f"image {s.key}", s.shard, f"does not decode: {err}")
            bad += 1
            if bad >= _MAX_BAD_IMAGES_IN_A_ROW:
                raise RuntimeError(f"{bad} images in a row did not decode (the last: {s.shard}/{s.key})") from err
            continue
        bad = 0
        yield transform(image), s.label


def _encoded_train(samples: Iterable[Sample], *, skips: SkipLog) -> Iterator[tuple[torch.Tensor, int]]:
    """JPEG bytes as 1-D uint8 tensors, for decoding on the GPU (other formats are skipped)."""
    for s in samples:
        if s.image[:3] != b"\xff\xd8\xff":
            skips.skip(f"image {s.key}", s.shard, "is not a JPEG (data.decode_on_device decodes JPEGs only)")
            continue
        yield torch.frombuffer(bytearray(s.image), dtype=torch.uint8), s.label


def _decode_val(samples: Iterable[Sample], transform: Callable) -> Iterator[tuple[torch.Tensor, Sample]]:
    for s in samples:
        try:
            image = decode_image(s.image)
        except DECODE_ERRORS as err:
            raise CorruptShardError(f"shard {s.shard}, key {s.key}: image does not decode ({err})") from err
        yield transform(image), s


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([b[0] for b in batch])
    return images, torch.tensor([b[1] for b in batch], dtype=torch.long)


def _collate_encoded(batch: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch], dtype=torch.long)


def _mix(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, mixup: Callable) -> Iterator[Any]:
    for images, labels in batches:
        yield mixup(images, labels)


def _batches_by_shard(decoded: Iterable[tuple[torch.Tensor, Sample]], batch_size: int) -> Iterator[ValBatch]:
    """Batches of at most `batch_size` that never mix shards; a batch is held back one sample so
    that the shard's last batch can say it is the last."""
    pending: list[tuple[torch.Tensor, Sample]] = []
    full: list[tuple[torch.Tensor, Sample]] | None = None
    for item in decoded:
        if full is not None:
            yield _val_batch(full, last=item[1].shard != full[0][1].shard)
            full = None
        if pending and pending[0][1].shard != item[1].shard:
            yield _val_batch(pending, last=True)
            pending = []
        pending.append(item)
        if len(pending) == batch_size:
            full, pending = pending, []
    if full is not None:
        yield _val_batch(full, last=not pending)
    if pending:
        yield _val_batch(pending, last=True)


def _val_batch(items: list[tuple[torch.Tensor, Sample]], *, last: bool) -> ValBatch:
    return ValBatch(
        images=torch.stack([t for t, _ in items]),
        targets=torch.tensor([s.label for _, s in items], dtype=torch.long),
        shard=items[0][1].shard,
        keys=tuple(s.key for _, s in items),
        last=last,
    )


# --- helpers ----------------------------------------------------------------------------------


def _iterate(it: Iterator[Any]) -> Iterator[Any]:
    try:
        yield from it
    finally:
        # Stop the workers now. Left to the garbage collector (after an error, or a break out of
        # the loop), torch's iterator can wait out a 5 s join timeout per worker.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _pin(cfg: DataConfig) -> bool:
    # Pinned memory only helps (and pinning only works) with a CUDA device to copy to.
    return cfg.pin_memory and torch.cuda.is_available()


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _seed(*parts: object) -> int:
    """A 63-bit seed from `parts`, the same in every process (str seeds hash with SHA-512)."""
    return random.Random("-".join(map(str, parts))).getrandbits(63)


def _check_shards_exist(urls: list[str]) -> None:
    """Fail before any worker starts when local shards listed in `_info.json` are missing."""
    missing = [local_path(u) for u in urls if url_exists(u) is False]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(
            f"shard {', '.join(missing[:3])}{more} is missing (listed in _info.json); "
            f"write the shards again or point root at a complete copy"
        )
