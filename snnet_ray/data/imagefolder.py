"""An ImageNet-style folder tree as shards: `SRC/{train,val}/<class>/*.JPEG` -> `OUT/{split}-*.tar`.

Classes are the sorted folder names under `train/` (the torchvision ImageFolder order, which for
ImageNet is timm's class order); other splits must use the same folders or a subset of them.
Keys are the file stems with anything but letters, digits, '_' and '-' replaced by '_'
(`n01440764_10026`, `ILSVRC2012_val_00000001`), made unique within a split by prefixing the class
folder (and a counter, if need be) where two stems collide.

Symbolic links are followed, but every folder is walked once, by its real path: a link back up
the tree (a loop) or a second link to a folder already walked is skipped with a warning, so no
image is listed twice and the walk ends.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter

from .shards import ImageRecord, ShardSummary, check_out_dir, write_shards
from .splits import VAL_SPLIT

__all__ = ["SPLIT_DIRS", "list_imagefolder", "write_imagefolder_shards"]

_logger = logging.getLogger(__name__)

SPLIT_DIRS = ("train", "val", "validation", "test")
# Files with these extensions are images to write (or to report when they do not decode);
# formats other than JPEG, PNG and WEBP are reported as unsupported rather than re-encoded.
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
_MAX_KEY = 80


def write_imagefolder_shards(
    src: str,
    out: str,
    *,
    shard_size: int = 1000,
    workers: int | None = None,
    seed: int = 0,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    val_name: str = VAL_SPLIT,
) -> ShardSummary:
    """Write the ImageFolder tree at `src` as webdataset shards in `out` (see `shards.py` for reruns).

    `workers` defaults to the machine's CPU count; `name` (the timm `wds/NAME`) to `src`'s folder name.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_out_dir(out, shard_size, workers)
    splits, class_names = list_imagefolder(src)
    return write_shards(
        splits,
        out,
        name=name or os.path.basename(os.path.abspath(src)),
        class_names=class_names,
        shard_size=shard_size,
        workers=workers,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        val_name=val_name,
    )


def list_imagefolder(src: str) -> tuple[dict[str, list[ImageRecord]], list[str]]:
    """The records of every split under `src` (sorted by class, then path) and the class names."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"--src {src} is not a directory")
    present = [s for s in SPLIT_DIRS if os.path.isdir(os.path.join(src, s))]
    if not present:
        raise ValueError(
            f"{src} has none of the split folders {'/, '.join(SPLIT_DIRS)}/; expected an ImageNet-style tree "
            f"such as {src}/train/<class>/*.JPEG and {src}/val/<class>/*.JPEG"
        )
    class_dirs = {s: _class_dirs(os.path.join(src, s)) for s in present}
    class_names = class_dirs["train"] if "train" in class_dirs else sorted(set().union(*class_dirs.values()))
    index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for split in present:
        extra = sorted(set(class_dirs[split]) - set(index))
        if extra:
            raise ValueError(
                f"{src}/{split} has class folders that train/ does not ({', '.join(extra[:5])}); "
                f"every split must use train/'s classes"
            )
        records = _split_records(os.path.join(src, split), class_dirs[split], index)
        if not records:
            raise ValueError(f"{src}/{split} holds no images (looked for {', '.join(sorted(_IMAGE_SUFFIXES))})")
        splits[split] = records
    return splits, class_names


def _class_dirs(split_dir: str) -> list[str]:
    classes = sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
    )
    if not classes:
        raise ValueError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    return classes


def _split_records(split_dir: str, classes: list[str], index: dict[str, int]) -> list[ImageRecord]:
    found: list[tuple[str, str, int]] = []  # (class, path relative to the class folder, size)
    ignored = []
    walked: set[str] = set()  # real paths of the folders walked in this split
    for cls in classes:
        cls_dir = os.path.join(split_dir, cls)
        for root, dirs, files in os.walk(cls_dir, followlinks=True):
            real = os.path.realpath(root)
            if real in walked:
                _logger.warning("%s: skipped, it leads to %s, which was already walked (a symlink loop or a "
                                "second link to one folder)", root, real)
                dirs[:] = []
                continue
            walked.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith("."):
                    continue
                path = os.path.join(root, f)
                if os.path.splitext(f)[1].lower() not in _IMAGE_SUFFIXES:
                    ignored.append(path)
                    continue
                found.append((cls, os.path.relpath(path, cls_dir), os.path.getsize(path)))
    if ignored:
        _logger.warning(
            "%s: ignored %d files that are not images by their extension (e.g. %s)",
            split_dir,
            len(ignored),
            ignored[0],
        )
    keys = _unique_keys(found)
    return [
        ImageRecord(key=key, label=index[cls], source=os.path.join(split_dir, cls, rel), size=size)
        for key, (cls, rel, size) in zip(keys, found)
    ]


def _unique_keys(found: list[tuple[str, str, int]]) -> list[str]:
    stems = [_safe(os.path.splitext(os.path.basename(rel))[0]) for _, rel, _ in found]
    counts = Counter(stems)
    keys, seen = [], set()
    for (cls, rel, _), stem in zip(found, stems):
        key = stem if counts[stem] == 1 else _safe(f"{cls}_{os.path.splitext(rel)[0]}")
        base, n = key, 1
        while key in seen:
            key, n = f"{base}_{n}", n + 1
        seen.add(key)
        keys.append(key)
    return keys


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:_MAX_KEY] or "_"
