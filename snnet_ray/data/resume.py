"""Safe reruns of the shard writer: resume an interrupted run, keep a finished one, refuse a mix.

Before writing, the writer records its *plan* - a fingerprint of the source listing (paths,
sizes, labels, keys), the shard size and the seed - in `_plan.json`, and after each shard is
renamed into place it appends that shard's counts to `_progress.jsonl`; at the end it writes
`_info.json` (holding the same fingerprint and every shard's counts) and removes both. So:
- the same plan again resumes: finished shards are kept, the rest are written; a finished set is
  left untouched, and a shard deleted (or changed in size) since is written again;
- a different plan (other source files, shard size or seed) over an output that already holds
  our files raises ValueError, unless `overwrite=True`, which deletes our shards and metadata
  first and writes everything anew. Files that are not ours are never touched.
One writer per output directory at a time: a lock file enforces it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from .info import INFO_NAME

__all__ = ["ShardResult", "end_plan", "finished_shards", "locked", "record_progress", "start_plan"]

_logger = logging.getLogger(__name__)

PLAN_NAME = "_plan.json"
PROGRESS_NAME = "_progress.jsonl"
LOCK_NAME = ".snnet_ray_shards.lock"
_SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-\d{6}\.tar$")
# Temp files of a run that crashed: hidden shards being written, and metadata being replaced.
_TEMP_RE = re.compile(r"^(\.[A-Za-z0-9_]+-\d{6}\.tar|_info\.json|_plan\.json)\.tmp-\d+$")


@dataclass
class ShardResult:
    """What writing one shard produced."""

    name: str
    split: str
    samples: int
    bytes: int
    corrupt: list[dict[str, str]]  # {"path", "reason", "shard"} per image left out


@contextlib.contextmanager
def locked(out: str) -> Iterator[None]:
    """Hold the output directory's writer lock; ValueError if another writer holds it."""
    path = os.path.join(out, LOCK_NAME)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another shard writer is working in {out}; wait for it to finish") from None
        try:
            _remove_temp_files(out)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def finished_shards(out: str, fingerprint: str, overwrite: bool) -> dict[str, ShardResult]:
    """Shards a previous run of the same plan finished and that are still intact (call under `locked`)."""
    previous = _previous_results(out, fingerprint)
    if previous is None or overwrite:
        ours = _our_files(out)
        if ours and not overwrite:
            raise ValueError(
                f"{out} already holds shards written from other source files or with another shard size "
                f"or seed ({', '.join(sorted(ours)[:3])}, ...); pass --overwrite (overwrite=True) to replace "
                f"them, or choose another output directory"
            )
        for f in ours:
            os.remove(os.path.join(out, f))
        return {}
    intact = {}
    for shard, result in previous.items():
        path = os.path.join(out, shard)
        if result.samples == 0 and not os.path.exists(path):
            intact[shard] = result  # every image was corrupt: nothing was written, nothing to redo
        elif os.path.exists(path) and os.path.getsize(path) == result.bytes:
            intact[shard] = result
        else:
            _logger.warning("%s is missing or changed since it was written; writing it again", path)
    return intact


def start_plan(out: str, fingerprint: str) -> None:
    """Record the plan about to be written."""
    path = os.path.join(out, PLAN_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"fingerprint": fingerprint}, f)
    os.replace(tmp, path)


def record_progress(out: str, result: ShardResult) -> None:
    """Record a shard renamed into place."""
    with open(os.path.join(out, PROGRESS_NAME), "a") as f:
        f.write(json.dumps(asdict(result)) + "\n")


def end_plan(out: str) -> None:
    """Drop the plan and progress files once `_info.json` holds everything."""
    for name in (PLAN_NAME, PROGRESS_NAME):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _previous_results(out: str, fingerprint: str) -> dict[str, ShardResult] | None:
    """Results recorded for `fingerprint` in `_info.json` or `_progress.jsonl`; None if another plan."""
    ours = (read_json(os.path.join(out, INFO_NAME)) or {}).get("snnet_ray", {})
    if ours.get("fingerprint") == fingerprint:
        return {r["name"]: ShardResult(**r) for r in ours.get("shards", [])}
    plan = read_json(os.path.join(out, PLAN_NAME))
    if plan is None or plan.get("fingerprint") != fingerprint:
        return None if _our_files(out) else {}
    results = {}
    with contextlib.suppress(FileNotFoundError), open(os.path.join(out, PROGRESS_NAME)) as f:
        for line in f:
            try:
                r = ShardResult(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut short by a crash: that shard is written again
            results[r.name] = r
    return results


def _our_files(out: str) -> list[str]:
    names = (INFO_NAME, PLAN_NAME, PROGRESS_NAME)
    return [f for f in os.listdir(out) if f in names or _SHARD_RE.match(f) or _TEMP_RE.match(f)]


def _remove_temp_files(out: str) -> None:
    for f in os.listdir(out):
        if _TEMP_RE.match(f):
            os.remove(os.path.join(out, f))
