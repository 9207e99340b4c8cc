"""Where shards live: local paths, `pipe:` commands and object stores behind one `open_url`.

A shards root is a local directory (`/data/imagenet-wds`, `file:///data/...`), a webdataset
`pipe:` command prefix (`pipe:aws s3 cp s3://bucket/imagenet` - the file name is appended, so
the command must end with the directory it reads from), or a URL of an object store or web
server (`s3://`, `gs://`, `az://`, `https://`, or any other protocol fsspec knows). Remote URLs
go through fsspec when its driver for that protocol is installed (s3fs, gcsfs, adlfs, ...) and
through pyarrow's built-in S3/GCS/HDFS file systems otherwise, so `s3://` and `gs://` work with
the packages the project already has.

Every opener turns "not there" into `FileNotFoundError` naming the URL, so a missing shard is a
clear error whatever the storage.
"""

from __future__ import annotations

import os
from typing import IO
from urllib.parse import urlparse

__all__ = ["is_local", "join_url", "local_path", "open_url", "url_exists"]

# Protocols pyarrow.fs resolves by itself (wheels ship S3, GCS and HDFS support).
_PYARROW_SCHEMES = {"s3", "gs", "gcs", "hdfs", "viewfs"}


def is_local(url: str | os.PathLike[str]) -> bool:
    """True for a plain path or a `file://` URL."""
    scheme = urlparse(os.fspath(url)).scheme
    # A one-letter scheme is a Windows drive ("C:/data"), not a protocol.
    return scheme in ("", "file") or len(scheme) == 1


def local_path(url: str | os.PathLike[str]) -> str:
    """The file-system path of a local URL."""
    url = os.fspath(url)
    if url.startswith("file://"):
        return urlparse(url).path
    if url.startswith("file:"):
        return url[len("file:") :]
    return url


def join_url(root: str, name: str) -> str:
    """`root/name` for paths, URLs and `pipe:` command prefixes alike."""
    if is_local(root) and not root.startswith("file:"):
        return os.path.join(root, name)
    return root.rstrip("/") + "/" + name


def url_exists(url: str) -> bool | None:
    """Whether `url` exists, or None where asking would cost a command or a network round trip."""
    if is_local(url):
        return os.path.exists(local_path(url))
    return None


def open_url(url: str) -> IO[bytes]:
    """Open `url` for reading bytes; raises FileNotFoundError naming it when it is not there."""
    if is_local(url):
        path = local_path(url)
        try:
            return open(path, "rb")  # the caller closes it
        except FileNotFoundError:
            raise FileNotFoundError(f"{url} does not exist") from None
    if url.startswith("pipe:"):
        import webdataset as wds

        # webdataset's Pipe raises on a non-zero exit status when the stream is closed.
        return wds.gopen(url, "rb")
    return _open_remote(url)


def _open_remote(url: str) -> IO[bytes]:
    scheme = urlparse(url).scheme
    if _fsspec_class(scheme) is not None:
        return _open_fsspec(url)
    if scheme in _PYARROW_SCHEMES:
        return _open_pyarrow(url)
    raise ValueError(
        f"cannot open {url}: no file system for '{scheme}://' is installed; "
        f"install the fsspec driver for it (e.g. s3fs, gcsfs, adlfs) or use a local path or a pipe: command"
    )


def _open_fsspec(url: str) -> IO[bytes]:
    import fsspec

    try:
        return fsspec.open(url, "rb").open()
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} does not exist") from None


def _open_pyarrow(url: str) -> IO[bytes]:
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(url)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{url} does not exist")
    return filesystem.open_input_stream(path)


def _fsspec_class(scheme: str) -> type | None:
    """fsspec's file system class for `scheme`, or None when it is unknown or its driver is missing."""
    try:
        import fsspec
    except ImportError:
        return None
    try:
        return fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError):
        return None
