"""The shard set's `_info.json`: classes, and per split the shard files and their sample counts.

The layout is timm's webdataset reader schema (`timm/data/readers/reader_wds.py`), so
`timm.data.create_dataset('wds/NAME', root=ROOT, split='train')` reads our shards too::

    {"name": "digits", "num_classes": 10, "class_names": [...],
     "splits": {"train": {"name": "train", "num_samples": 1437,
                          "filenames": ["train-000000.tar", ...], "shard_lengths": [256, ...]}, ...},
     "snnet_ray": {...how and from what the shards were written...}}

Sample counts known in advance are what lets every rank run the same number of training steps
(`with_epoch`) and lets validation check that it read every sample exactly once.

`_info.json` is input like any other: a shard file name is a relative path whose parts follow
`snnet_ray.names` (no `..`, no absolute path, no shell metacharacter), so it can neither point
outside its root nor run a command under a `pipe:` root; there each name is also shell-quoted.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from snnet_ray.names import is_name

from .splits import alias_of, resolve_split
from .storage import is_local, join_url, local_path, open_url

__all__ = ["INFO_NAME", "DatasetInfo", "SplitInfo", "check_shard_name", "read_info", "shard_url", "write_info"]

INFO_NAME = "_info.json"


@dataclass(frozen=True)
class SplitInfo:
    """One split: its shard file names (relative to the root) and samples per shard."""

    name: str
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.shard_lengths)

    @property
    def num_shards(self) -> int:
        return len(self.filenames)

    def length_of(self, shard: str) -> int:
        """Samples in the shard named `shard`."""
        return self.shard_lengths[self.filenames.index(shard)]


@dataclass(frozen=True)
class DatasetInfo:
    """What `_info.json` says about a shard set at `root`."""

    root: str
    name: str
    num_classes: int
    splits: dict[str, SplitInfo]
    class_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> SplitInfo:
        """The split called `name` (`val` and `validation` name the same split, see splits.py);
        ValueError listing the splits there are otherwise."""
        name = resolve_split(name, self.splits)
        if name not in self.splits:
            raise ValueError(f"split '{name}' is not in {join_url(self.root, INFO_NAME)}; it has {sorted(self.splits)}")
        return self.splits[name]

    def urls(self, split: str) -> list[str]:
        """Full URLs of the split's shards, in `_info.json` order."""
        return [shard_url(self.root, f) for f in self.split(split).filenames]

    def to_json(self) -> dict[str, Any]:
        splits = {
            s.name: {
                "name": s.name,
                "num_samples": s.num_samples,
                "filenames": list(s.filenames),
                "shard_lengths": list(s.shard_lengths),
            }
            for s in self.splits.values()
        }
        # The validation split under its other name too (same entry, `name` says which is real), so
        # timm's reader finds it as split='val' and split='validation'.
        for s in list(splits):
            other = alias_of(s)
            if other is not None and other not in splits:
                splits[other] = dict(splits[s])
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "splits": splits,
            **self.extra,
        }


def read_info(root_or_url: str) -> DatasetInfo:
    """Read `_info.json` from a shards root (local directory, `pipe:` prefix, or URL)."""
    url = join_url(root_or_url, INFO_NAME)
    try:
        with open_url(url) as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no {INFO_NAME} at {root_or_url}: write shards there with `snnet-ray shards digits|imagefolder "
            f"--out DIR` or point at a directory that holds them"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {url}: {err}") from err
    try:
        splits = {
            name: SplitInfo(
                name=name,
                filenames=tuple(check_shard_name(f, f"{url}: splits.{name}.filenames") for f in s["filenames"]),
                shard_lengths=tuple(_count(n, f"{url}: splits.{name}.shard_lengths") for n in s["shard_lengths"]),
            )
            for name, s in data["splits"].items()
            if not _is_alias(name, s, data["splits"])
        }
        class_names = tuple(data.get("class_names", ()))
        num_classes = _count(data.get("num_classes", len(class_names)), f"{url}: num_classes")
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{url} is not a shard index (missing or bad field: {err})") from err
    for split in splits.values():
        if len(split.filenames) != len(split.shard_lengths):
            raise ValueError(
                f"{url}: split '{split.name}' lists {len(split.filenames)} filenames but "
                f"{len(split.shard_lengths)} shard_lengths; write the shards again"
            )
    known = {"name", "num_classes", "class_names", "splits"}
    extra = {k: v for k, v in data.items() if k not in known}
    return DatasetInfo(
        root=root_or_url,
        name=str(data.get("name", "")),
        num_classes=num_classes,
        splits=splits,
        class_names=class_names,
        extra=extra,
    )


def check_shard_name(name: object, where: str = "shard") -> str:
    """A shard file name from `_info.json`: a relative path whose parts follow the name rule."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or not all(is_name(p) for p in parts):
        raise ValueError(
            f"{where}: {name!r} is not a shard file name; names are relative to the shards root, their parts "
            "letters, digits and _ . , : = + @ - (no '..', no leading '/', no spaces or shell characters)"
        )
    return name  # type: ignore[return-value]


def shard_url(root: str, name: str) -> str:
    """The URL of shard `name` under `root`; under a `pipe:` command root the name is shell-quoted."""
    check_shard_name(name)
    if root.startswith("pipe:"):
        # The name is appended to the command's last word: quote it as a word of its own.
        return root.rstrip("/") + "/" + shlex.quote(name)
    return join_url(root, name)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise ValueError(f"{where} must be a whole number of samples/classes, got {value!r}")
    return value


def _is_alias(key: str, entry: Any, splits: dict[str, Any]) -> bool:
    # The validation split's second entry (written by to_json): its `name` is the other key.
    name = entry.get("name") if isinstance(entry, dict) else None
    return name != key and name == alias_of(key) and name in splits


def write_info(info: DatasetInfo) -> str:
    """Write `_info.json` into a local root atomically (temp file, then rename); returns its path."""
    if not is_local(info.root):
        raise ValueError(f"shards are written to local directories only, not {info.root}")
    path = os.path.join(local_path(info.root), INFO_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(info.to_json(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
