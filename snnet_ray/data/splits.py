"""Split names: timm calls the validation split `validation`, older snnet-ray shards call it `val`.

timm's webdataset reader looks a split up by its key in `_info.json` (`create_dataset('wds/NAME',
split='validation')`), and its published ImageNet shards are `validation-*.tar`. snnet-ray writes
that name by default and lists the split under both keys in `_info.json` (the second entry names
the first in its `name` field), so timm's `split='val'` and `split='validation'` both work on our
shards; our loaders accept either name on shards from either writer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TypeVar

__all__ = ["VAL_NAMES", "VAL_SPLIT", "alias_of", "canonical_splits", "resolve_split"]

VAL_SPLIT = "validation"  # what shards are written as (timm's convention)
VAL_NAMES = ("validation", "val")  # names that mean the validation split, in order of preference

T = TypeVar("T")


def alias_of(name: str) -> str | None:
    """The other name of the validation split (`val` <-> `validation`); None for other splits."""
    if name not in VAL_NAMES:
        return None
    return VAL_NAMES[1 - VAL_NAMES.index(name)]


def resolve_split(name: str, available: Collection[str]) -> str:
    """The key in `available` that `name` means: itself, or the validation split's other name."""
    if name in available:
        return name
    other = alias_of(name)
    return other if other is not None and other in available else name


def canonical_splits(splits: Mapping[str, T], val_name: str = VAL_SPLIT) -> dict[str, T]:
    """`splits` with the validation split renamed to `val_name` (`validation` or `val`).

    Used when writing shards: an ImageNet tree's `val/` folder becomes `validation-*.tar`.
    """
    if val_name not in VAL_NAMES:
        raise ValueError(f"the validation split is written as one of {', '.join(VAL_NAMES)}, not '{val_name}'")
    both = [s for s in splits if s in VAL_NAMES]
    if len(both) > 1:
        raise ValueError(
            f"splits {' and '.join(both)} are both the validation split; keep one of them (e.g. only val/)"
        )
    return {(val_name if s in VAL_NAMES else s): records for s, records in splits.items()}
