"""Lazy package exports: `snnet-ray --help` and the results service start without torch.

A package's `__init__` declares which submodule defines each public name; the submodule is
imported on first access (PEP 562 module `__getattr__`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for a package whose public `names` map to relative submodules."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(names), __getattr__
