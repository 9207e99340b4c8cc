"""Writing webdataset shards: `{split}-{000000..}.tar` (`train`, `validation`) holding `KEY.jpg|png|webp` + `KEY.cls`.

Every image keeps its original bytes; its extension follows what the bytes are (see `images.py`).
Keys have no dots (webdataset splits a member name at the first dot). The train split is shuffled
into shards with a fixed seed, so a shard is a random sample of classes; the other splits keep
their sorted order. Shards are written by parallel worker processes, each into a hidden temp file
that is renamed into place when complete, so a `*.tar` in the output is always a whole shard.

Every image is decoded before it is written. One that does not decode (or is of an unsupported
format, or cannot be read) is left out, logged with its path and reason, counted in the
summary and listed in `_info.json` - never dropped silently. A shard whose every image was left
out is not written at all (an empty tar would be read as a shard of nothing), nor listed.

A rerun with the same source and settings resumes an interrupted run and leaves a finished one
untouched; other settings over existing shards need `overwrite=True` (see `resume.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import re
import tarfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from .images import image_extension
from .info import INFO_NAME, DatasetInfo, SplitInfo, write_info
from .resume import ShardResult, end_plan, finished_shards, locked, read_json, record_progress, start_plan
from .splits import VAL_SPLIT, canonical_splits
from .storage import is_local, local_path

__all__ = ["ImageRecord", "ShardSummary", "check_out_dir", "shard_name", "write_shards"]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    """One image to write: its key, class index, where it came from, and its bytes or size."""

    key: str
    label: int
    source: str  # file path (read by the worker) or a name for in-memory images, used in reports
    data: bytes | None = None  # in-memory bytes; None reads `source`
    size: int = -1  # file size when known, part of the plan's fingerprint


@dataclass
class ShardSummary:
    """What a shard-writing run left in `out`, and how fast it wrote."""

    out: str
    name: str
    num_classes: int
    splits: dict[str, dict[str, int]]  # split -> {"images": n, "shards": k}
    images: int
    shards: int
    bytes: int
    written_images: int  # written by this run (the rest were already there)
    written_shards: int
    seconds: float
    corrupt: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason", "shard"}

    @property
    def images_per_s(self) -> float:
        return self.written_images / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 1)}

    def format(self, max_corrupt: int = 20) -> str:
        """A short human-readable table."""
        lines = [f"shards in {self.out} ({self.name}, {self.num_classes} classes)"]
        lines.append(f"  {'split':<12}{'images':>10}{'shards':>8}")
        for split, row in self.splits.items():
            lines.append(f"  {split:<12}{row['images']:>10}{row['shards']:>8}")
        lines.append(f"  total {self.images} images, {self.shards} shards, {self.bytes / 1e6:.1f} MB")
        if self.written_shards:
            lines.append(
                f"  this run wrote {self.written_images} images in {self.written_shards} shards in "
                f"{self.seconds:.1f} s ({self.images_per_s:.0f} images/s)"
            )
        else:
            lines.append("  already complete: this run wrote nothing")
        if self.corrupt:
            lines.append(f"  {len(self.corrupt)} corrupt or unreadable images left out:")
            lines += [f"    {c['path']}: {c['reason']}" for c in self.corrupt[:max_corrupt]]
            if len(self.corrupt) > max_corrupt:
                lines.append(f"    ... and {len(self.corrupt) - max_corrupt} more (see {INFO_NAME})")
        return "\n".join(lines)


def shard_name(split: str, index: int) -> str:
    """`train-000042.tar`."""
    return f"{split}-{index:06d}.tar"


def write_shards(
    splits: Mapping[str, Sequence[ImageRecord]],
    out: str,
    *,
    name: str,
    class_names: Sequence[str],
    shard_size: int = 1000,
    workers: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    val_name: str = VAL_SPLIT,
) -> ShardSummary:
    """Write `splits` (records in a fixed order) as shards into the local directory `out`.

    The train split is shuffled with `seed`; `workers` > 1 writes shards in that many processes.
    The validation split (`val` or `validation` in `splits`) is written as `val_name`: timm's
    `validation` by default, and `_info.json` lists it under both names (splits.py).
    """
    out = check_out_dir(out, shard_size, workers)
    if val_name != "val" and _holds_val_named_set(out):
        # Shards written before `validation` became the default: our loaders and timm read them as they
        # are, so a rerun keeps (or resumes) that set instead of refusing it as different settings.
        val_name = "val"
    splits = canonical_splits(splits, val_name)
    for split in splits:
        if not re.fullmatch(r"[A-Za-z0-9_]+", split):
            raise ValueError(f"split names may hold letters, digits and '_' only, got '{split}'")
    os.makedirs(out, exist_ok=True)
    plan = _plan(splits, out, shard_size, seed)
    fingerprint = _fingerprint(plan, name, class_names, shard_size, seed)

    start = time.perf_counter()
    with locked(out):
        done = finished_shards(out, fingerprint, overwrite)
        todo = [t for t in plan if t.name not in done]
        info = _info(out, name, class_names, plan, done, fingerprint, shard_size, seed) if not todo else None
        if info is not None and read_json(os.path.join(out, INFO_NAME)) == info.to_json():
            return _summary(out, info, plan, done, [], time.perf_counter() - start)  # finished: touch nothing
        start_plan(out, fingerprint)
        written = _run_tasks(out, todo, workers, progress, done)
        info = _info(out, name, class_names, plan, done, fingerprint, shard_size, seed)
        write_info(info)
        end_plan(out)
    return _summary(out, info, plan, done, written, time.perf_counter() - start)


def _holds_val_named_set(out: str) -> bool:
    info = read_json(os.path.join(out, INFO_NAME)) if os.path.isdir(out) else None
    splits = info.get("splits") if isinstance(info, dict) else None
    # The real entry is `val` (name "val"); a `validation` entry, if any, is its alias (to_json).
    val = splits.get("val") if isinstance(splits, dict) else None
    alias = splits.get("validation") if isinstance(splits, dict) else None
    return isinstance(val, dict) and val.get("name") == "val" and (alias is None or alias == val)


def check_out_dir(out: str, shard_size: int = 1, workers: int = 1) -> str:
    """The local path of `out`, after checking the writer's arguments (before any expensive work)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not is_local(out):
        raise ValueError(f"--out must be a local directory (got {out}); write locally, then copy to the store")
    out = local_path(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    return out


# --- plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ShardTask:
    out: str
    split: str
    name: str
    records: tuple[ImageRecord, ...]


def _plan(splits: Mapping[str, Sequence[ImageRecord]], out: str, shard_size: int, seed: int) -> list[_ShardTask]:
    tasks = []
    for split, records in splits.items():
        records = list(records)
        keys = [r.key for r in records]
        if len(set(keys)) != len(keys):
            raise ValueError(f"split '{split}' has duplicate keys; keys must be unique within a split")
        bad = [k for k in keys if not re.fullmatch(r"[A-Za-z0-9_-]+", k)]
        if bad:
            raise ValueError(f"keys may hold letters, digits, '_' and '-' only (no dots): {bad[:3]}")
        if split == "train":
            random.Random(seed).shuffle(records)
        for i in range(0, len(records), shard_size):
            name = shard_name(split, i // shard_size)
            tasks.append(_ShardTask(out, split, name, tuple(records[i : i + shard_size])))
    return tasks


def _fingerprint(plan: list[_ShardTask], name: str, class_names: Sequence[str], shard_size: int, seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, name, list(class_names), shard_size, seed]).encode())
    for task in plan:
        h.update(task.name.encode())
        for r in task.records:
            content = hashlib.sha1(r.data).hexdigest() if r.data is not None else r.size
            h.update(f"\0{r.key}\0{r.label}\0{r.source}\0{content}".encode())
    return h.hexdigest()


# --- writing ----------------------------------------------------------------------------------


def _run_tasks(
    out: str, todo: list[_ShardTask], workers: int, progress: bool, done: dict[str, ShardResult]
) -> list[str]:
    """Write `todo`, recording each finished shard in `done` and in the progress file."""
    from tqdm import tqdm

    if not todo:
        return []
    bar = tqdm(total=sum(len(t.records) for t in todo), unit="img", desc=f"shards -> {out}", disable=not progress)
    written: list[str] = []

    def record(result: ShardResult) -> None:
        done[result.name] = result
        written.append(result.name)
        record_progress(out, result)
        for c in result.corrupt:
            bar.write(f"corrupt image left out: {c['path']} ({c['reason']})")
            _logger.warning("corrupt image left out: %s (%s)", c["path"], c["reason"])
        bar.update(result.samples + len(result.corrupt))

    try:
        if workers <= 1 or len(todo) <= 1:
            for task in todo:
                record(_write_shard(task))
        else:
            # forkserver: forking this process, which may hold threads (Ray, torch), can deadlock;
            # the server is a fresh single-threaded process that imports this module once, so
            # workers start in milliseconds, not after importing the package (torch) each.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                pending: set[Future] = {pool.submit(_write_shard, t) for t in todo}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            record(fut.result())
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return written


def _write_shard(task: _ShardTask) -> ShardResult:
    """Write one shard into a hidden temp file, then rename it into place (runs in a worker)."""
    final = os.path.join(task.out, task.name)
    tmp = os.path.join(task.out, f".{task.name}.tmp-{os.getpid()}")
    corrupt, samples = [], 0
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rec in task.records:
                try:
                    data = rec.data if rec.data is not None else _read_file(rec.source)
                    ext = image_extension(data)
                except (OSError, ValueError) as err:
                    corrupt.append({"path": rec.source, "reason": str(err), "shard": task.name})
                    continue
                _add_member(tar, f"{rec.key}.{ext}", data)
                _add_member(tar, f"{rec.key}.cls", str(rec.label).encode())
                samples += 1
        f.flush()
        os.fsync(f.fileno())
    if samples == 0:
        os.remove(tmp)
        return ShardResult(task.name, task.split, 0, 0, corrupt)
    os.replace(tmp, final)
    return ShardResult(task.name, task.split, samples, os.path.getsize(final), corrupt)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 0  # same inputs, same bytes
    tar.addfile(info, io.BytesIO(data))


# --- results ----------------------------------------------------------------------------------


def _info(
    out: str,
    name: str,
    class_names: Sequence[str],
    plan: list[_ShardTask],
    done: dict[str, ShardResult],
    fingerprint: str,
    shard_size: int,
    seed: int,
) -> DatasetInfo:
    splits: dict[str, list[ShardResult]] = {}
    for task in plan:
        splits.setdefault(task.split, [])
        if done[task.name].samples:  # a shard of only corrupt images was not written
            splits[task.split].append(done[task.name])
    shards = [done[t.name] for t in plan]
    return DatasetInfo(
        root=out,
        name=name,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        splits={s: SplitInfo(s, tuple(r.name for r in rs), tuple(r.samples for r in rs)) for s, rs in splits.items()},
        extra={
            "snnet_ray": {
                "version": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "shard_size": shard_size,
                "seed": seed,
                "bytes": sum(r.bytes for r in shards),
                "corrupt": [c for r in shards for c in r.corrupt],
                "shards": [asdict(r) for r in shards],
            }
        },
    )


def _summary(
    out: str,
    info: DatasetInfo,
    plan: list[_ShardTask],
    done: dict[str, ShardResult],
    written: list[str],
    seconds: float,
) -> ShardSummary:
    ours = info.extra["snnet_ray"]
    return ShardSummary(
        out=out,
        name=info.name,
        num_classes=info.num_classes,
        splits={s.name: {"images": s.num_samples, "shards": s.num_shards} for s in info.splits.values()},
        images=sum(s.num_samples for s in info.splits.values()),
        shards=sum(s.num_shards for s in info.splits.values()),
        bytes=ours["bytes"],
        written_images=sum(done[n].samples for n in written),
        written_shards=len(written),
        seconds=seconds,
        corrupt=ours["corrupt"],
    )
