"""Files a worker reads from object stores, downloaded once per node into a node-local cache.

Workers receive URLs (`s3://`, `gs://`, `https://`, any fsspec protocol) or shared paths, never a
path the driver downloaded to: on a cluster whose head runs no training, the driver's disk is not
the workers'. Each node keeps one copy per URL under `$SNNET_CACHE_DIR` (default
`~/.cache/snnet-ray`), however many workers it runs:

- a lock file per target (`fcntl.flock`) makes the node's workers take turns: the first downloads,
  the others find the finished file;
- each process writes to its own temporary name (host, pid and a random suffix) and renames it into
  place atomically, so no reader ever sees a partial file and two writers never share one;
- the size is checked against the source's before the rename (a cut connection is an error, not a
  truncated weights file), and a cached file whose size no longer matches is fetched again.

    path = fetch_to_node("s3://bucket/deit_small.safetensors")   # in every worker
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from snnet_ray.data.storage import is_local, local_path, open_url

__all__ = ["cache_dir", "fetch_to_node", "is_remote", "remote_size"]

ENV_CACHE = "SNNET_CACHE_DIR"
CHUNK = 1 << 24


def cache_dir() -> Path:
    """This node's cache: $SNNET_CACHE_DIR, else ~/.cache/snnet-ray."""
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/snnet-ray").expanduser()


def is_remote(url: object) -> bool:
    """True for a URL a worker must download (not a local path, `file://` URL or `pipe:` command)."""
    return isinstance(url, str) and "://" in url and not is_local(url) and not url.startswith("pipe:")


def remote_size(url: str) -> int | None:
    """The size in bytes the source reports for `url`, or None when it reports none."""
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        size = fs.size(path)
        return int(size) if size is not None else None
    except (ImportError, ValueError):
        pass
    try:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(url)
        return int(fs.get_file_info(path).size)
    except Exception:
        return None


def fetch_to_node(url: str, directory: str | Path | None = None) -> Path:
    """A local copy of `url` on this node, downloading it only if no process of the node has.

    Local paths and `file://` URLs are returned as paths, unchanged (shared file systems)."""
    if not is_remote(url):
        return Path(local_path(url))
    root = Path(directory).expanduser() if directory is not None else cache_dir() / "weights"
    name = Path(url.split("?")[0].rstrip("/")).name or "file"
    target = root / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = remote_size(url)
    with _node_lock(target.with_name(target.name + ".lock")):
        if target.is_file() and (expected is None or target.stat().st_size == expected):
            return target
        tmp = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        try:
            written = 0
            with open_url(url) as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    written += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if expected is not None and written != expected:
                raise OSError(
                    f"downloading {url} gave {written} bytes but the source has {expected}; the transfer was "
                    "cut short, run again"
                )
            os.replace(tmp, target)  # atomic: readers see the old state or the whole file
        finally:
            tmp.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among this node's processes (flock on a node-local file)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
