"""What `ray job submit --working-dir DIR --runtime-env ENV` would upload, and whether Ray takes it.

Ray walks the working dir, skips what the runtime env's `excludes` and every `.gitignore` (and
`.rayignore`) match, and zips the rest; the dashboard refuses request bodies over 100 MiB ("413:
Maximum request body size 104857600 exceeded"). The walk here is Ray's own (its packaging
functions, private but the only definition of what ships), so the size and the file list are the
ones Ray would send; the sum of file sizes bounds the zip from above.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_UPLOAD_BYTES", "UploadPlan", "UploadTooLarge", "check_upload", "load_runtime_env", "plan_upload"]

MAX_UPLOAD_BYTES = 100 * 2**20  # the dashboard's request body limit
MIB = 2**20


class UploadTooLarge(ValueError):
    """A working dir that Ray would refuse to upload; the message names the largest folders."""


@dataclass
class UploadPlan:
    """The files an upload holds (paths relative to the working dir) and their sizes."""

    root: Path
    files: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def largest_folders(self, n: int = 5) -> list[tuple[str, int]]:
        """The `n` largest folders (at the working dir's top level and one below) with their bytes;
        files at the top level count as themselves."""
        sizes: dict[str, int] = defaultdict(int)
        for path, size in self.files.items():
            parts = path.split("/")
            if len(parts) == 1:
                sizes[path] += size
                continue
            sizes[parts[0] + "/"] += size
            if len(parts) > 2:
                sizes["/".join(parts[:2]) + "/"] += size
        # A sub-folder is named only when it is not most of its parent (the parent says it already).
        names = sorted(sizes, key=lambda k: -sizes[k])
        shown = [k for k in names if k.count("/") == 1 or sizes[k] < 0.9 * sizes[k.split("/")[0] + "/"]]
        return [(k, sizes[k]) for k in shown[:n]]

    def format(self) -> str:
        folders = ", ".join(f"{name} {size / MIB:.1f} MiB" for name, size in self.largest_folders())
        return f"{len(self.files)} files, {self.total / MIB:.1f} MiB (largest: {folders or 'none'})"


def load_runtime_env(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A runtime env YAML file as a dict (`excludes` checked to be a list of strings)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"runtime env {path} does not exist (the project's is cluster/runtime_env.yaml)")
    env = yaml.safe_load(path.read_text()) or {}
    if not isinstance(env, dict):
        raise ValueError(f"runtime env {path} must be a YAML mapping, not {type(env).__name__}")
    excludes = env.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(e, str) for e in excludes):
        raise ValueError(f"runtime env {path}: excludes must be a list of patterns (strings)")
    return env


def plan_upload(working_dir: str | os.PathLike[str], excludes: list[str] | None = None) -> UploadPlan:
    """Every file Ray would upload from `working_dir`, with the runtime env's `excludes` and every
    `.gitignore` / `.rayignore` under it applied as Ray applies them."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(working_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"working dir {working_dir} is not a directory")
    plan = UploadPlan(root)

    def add(path: Path) -> None:
        if path.is_file() and not path.is_symlink():
            plan.files[path.relative_to(root).as_posix()] = path.stat().st_size

    quiet = logging.getLogger(f"{__name__}.walk")
    quiet.setLevel(logging.WARNING)  # Ray logs every ignore file it reads at INFO
    _dir_travel(root, [_get_excludes(root, list(excludes or []))], add, include_gitignore=True, logger=quiet)
    return plan


def check_upload(
    working_dir: str | os.PathLike[str], excludes: list[str] | None = None, limit: int = MAX_UPLOAD_BYTES
) -> UploadPlan:
    """The upload plan, or `UploadTooLarge` naming the largest folders when it exceeds `limit` bytes."""
    plan = plan_upload(working_dir, excludes)
    if plan.total > limit:
        folders = "; ".join(f"{name} {size / MIB:.1f} MiB" for name, size in plan.largest_folders())
        raise UploadTooLarge(
            f"working dir {plan.root} would upload {plan.total / MIB:.1f} MiB in {len(plan.files)} files, over "
            f"Ray's {limit / MIB:.0f} MiB limit for a job's working dir. Largest folders: {folders}. Fix: move "
            "data, weights and outputs out of the checkout, or add them to .gitignore or to the runtime env's "
            "excludes (cluster/runtime_env.yaml)"
        )
    return plan
