"""Reading samples out of tar shards, with the error policy of each pipeline.

A sample is a run of tar members sharing a key (`KEY.jpg` + `KEY.cls`), webdataset's rule: the
key is the member path up to the first dot of its file name. Each sample carries the name of the
shard it came from, which validation reports per shard.

Policy. A shard that does not exist raises FileNotFoundError naming it, always. Otherwise:
- training (`strict=False`): a truncated or unreadable tar, a sample without image or label, and
  later an image that does not decode, are logged with a running count and skipped;
- validation (`strict=True`): each of these raises `CorruptShardError` naming the shard and key,
  and so does a shard holding fewer or more samples than `_info.json` lists (a tar cut at a member
  boundary reads cleanly, so only the count reveals it) - the accuracies must be exact.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .images import READ_EXTENSIONS

__all__ = ["CorruptShardError", "Sample", "SkipLog", "read_samples", "shard_samples"]

_logger = logging.getLogger(__name__)

# What a damaged or vanished tar stream raises while being read.
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
# A tar header may claim any size: a member larger than this is not read into memory (the largest
# ImageNet JPEG is ~15 MB), and its sample is skipped (train) or refused (validation).
MAX_MEMBER_BYTES = 256 * 1024 * 1024


class CorruptShardError(ValueError):
    """A shard that cannot be read exactly (validation), naming the shard and the key."""


@dataclass(slots=True)
class Sample:
    key: str
    shard: str  # shard file name, e.g. 'val-000003.tar'
    image: bytes
    label: int


class SkipLog:
    """Counts what training skipped, logging each skip with the running total on this rank.

    The counter lives in shared memory so DataLoader worker processes add to the same total.
    """

    def __init__(self) -> None:
        self._count = multiprocessing.get_context().Value("q", 0)

    @property
    def count(self) -> int:
        return int(self._count.value)

    def skip(self, what: str, shard: str, reason: object) -> None:
        with self._count.get_lock():
            self._count.value += 1
            total = self._count.value
        _logger.warning("skipped %s in %s: %s (%d skipped so far on this rank)", what, shard, reason, total)


def read_samples(
    urls: Iterable[str],
    *,
    strict: bool,
    expected: dict[str, int] | None = None,
    skips: SkipLog | None = None,
) -> Iterator[Sample]:
    """The samples of every shard in `urls`, in order (see the module docstring for errors)."""
    for url in urls:
        yield from shard_samples(url, strict=strict, expected=(expected or {}).get(url), skips=skips)


def shard_samples(
    url: str, *, strict: bool, expected: int | None = None, skips: SkipLog | None = None
) -> Iterator[Sample]:
    """The samples of the shard at `url`."""
    from .storage import open_url

    shard = os.path.basename(url.rstrip("/"))
    count, key = 0, None
    try:
        stream = open_url(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {url} is missing (it is listed in _info.json)") from None
    except (OSError, ValueError) as err:
        if strict:
            raise CorruptShardError(f"cannot open shard {url}: {err}") from err
        _skip(skips, "shard", shard, f"cannot open: {err}")
        return
    try:
        for key, fields in _grouped_members(stream):
            sample = _to_sample(key, shard, fields)
            if isinstance(sample, str):
                if strict:
                    raise CorruptShardError(f"shard {url}, key {key}: {sample}")
                _skip(skips, f"sample {key}", shard, sample)
                continue
            count += 1
            yield sample
    except _TAR_ERRORS as err:
        where = f"after key {key}" if key else "at its start"
        if strict:
            raise CorruptShardError(f"shard {url} is truncated or corrupt {where}: {err}") from err
        _skip(skips, "rest of shard", shard, f"truncated or corrupt {where}: {err}")
        return
    finally:
        try:
            stream.close()
        except _TAR_ERRORS as err:  # a pipe: command that failed reports it on close
            if strict:
                raise CorruptShardError(f"reading shard {url} failed: {err}") from err
            _logger.warning("reading %s failed on close: %s", url, err)
    if expected is not None and count != expected:
        msg = f"holds {count} readable samples but _info.json lists {expected} (truncated or replaced?)"
        if strict:
            raise CorruptShardError(f"shard {url} {msg}")
        if count < expected:
            _skip(skips, f"{expected - count} missing samples", shard, msg)


def _grouped_members(stream) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """(key, {extension: bytes, or None for a member over MAX_MEMBER_BYTES}) per run of members sharing a key."""
    key, fields = None, {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isreg():
                continue
            head, _, name = member.name.rpartition("/")
            if name.startswith("__") or "." not in name:
                continue  # webdataset metadata, or a file without extension
            stem, ext = name.split(".", 1)
            member_key = f"{head}/{stem}" if head else stem
            if member_key != key:
                if key is not None:
                    yield key, fields
                key, fields = member_key, {}
            fields[ext.lower()] = tar.extractfile(member).read() if member.size <= MAX_MEMBER_BYTES else None
    if key is not None:
        yield key, fields


def _to_sample(key: str, shard: str, fields: dict[str, bytes | None]) -> Sample | str:
    """The sample, or why these members are not one."""
    oversized = sorted(e for e, v in fields.items() if v is None)
    if oversized:
        return f"member {key}.{oversized[0]} is over {MAX_MEMBER_BYTES} bytes; it was not read"
    image = next((fields[e] for e in READ_EXTENSIONS if e in fields), None)
    if image is None:
        return f"no image member ({'/'.join(READ_EXTENSIONS)}), found {sorted(fields)}"
    if "cls" not in fields:
        return f"no .cls label member, found {sorted(fields)}"
    try:
        label = int(fields["cls"])
    except ValueError:
        return f"label {fields['cls'][:20]!r} is not an integer"
    return Sample(key=key, shard=shard, image=image, label=label)


def _skip(skips: SkipLog | None, what: str, shard: str, reason: object) -> None:
    if skips is None:
        _logger.warning("skipped %s in %s: %s", what, shard, reason)
    else:
        skips.skip(what, shard, reason)
