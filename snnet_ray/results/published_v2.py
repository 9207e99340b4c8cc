"""SN-Netv2's published per-config results, as reference data beside a run's.

    rows = load_published_v2("deit3_s_l")   # 134 PublishedV2Config, config_id order
    rows[0].gmacs, rows[0].top1              # 4.608, 82.906 (DeiT3-S alone)

The data (`published/snnetv2_<name>.csv`) is the official release file
`classification/results/stitches_res_s_l.txt` of ziplab/SN-Netv2 (commit dd17607, Apache-2.0):
ImageNet-1k top-1/top-5 of every config of the DeiT3-S/L SN-Netv2 (LoRA rank 64, 50 epochs),
with GMACs from the official FLOPs (fvcore counts one multiply-add as one FLOP, so they are
GMACs; they also count LayerNorms, ~0.2% above `SNNet.cost`). Each row names its config as
`SNNet(rule="snnetv2")` does ('0-1:3,8': anchor 0's blocks 0..3, then anchor 1's from block 8),
from the official route, so a run over the same anchors lines up config by config:
`config_id` is the id in that SN-Net, `official_id` the id in the official code (which skips
one never-trained config). Only DeiT3-S/L has a published results file; the S/B and B/L
checkpoints were released without one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PUBLISHED_V2", "PublishedV2Config", "list_published_v2", "load_published_v2"]

DATA_DIR = Path(__file__).resolve().parent / "published"

PUBLISHED_V2: dict[str, dict] = {
    "deit3_s_l": {
        "file": "snnetv2_deit3_s_l.csv",
        "anchors": ["deit3_small_patch16_224.fb_in22k_ft_in1k", "deit3_large_patch16_224.fb_in22k_ft_in1k"],
        "rule": "snnetv2",
        "lora_r": 64,
        "preset": "deit3_s_l_imagenet",
        "source": "ziplab/SN-Netv2@dd17607 classification/results/stitches_res_s_l.txt",
    },
}
"""Published SN-Netv2 result sets: data file, the SN-Net they belong to, and where they come from."""


@dataclass(frozen=True)
class PublishedV2Config:
    """One config's published result: ids, name, route kind, GMACs and ImageNet-1k accuracy (%)."""

    config_id: int
    official_id: int
    name: str
    variant: str
    gmacs: float
    top1: float
    top5: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def list_published_v2() -> list[str]:
    """Names of the published SN-Netv2 result sets (e.g. 'deit3_s_l')."""
    return sorted(PUBLISHED_V2)


def load_published_v2(name: str = "deit3_s_l") -> list[PublishedV2Config]:
    """The published per-config results of SN-Netv2 set `name`, in config id order."""
    if name not in PUBLISHED_V2:
        raise ValueError(f"no published SN-Netv2 results named {name!r}; available: {', '.join(list_published_v2())}")
    path = DATA_DIR / PUBLISHED_V2[name]["file"]
    rows = []
    with path.open(newline="") as f:
        for config_id, row in enumerate(csv.DictReader(f)):
            rec = PublishedV2Config(
                config_id=config_id,
                official_id=int(row["official_id"]),
                name=row["name"],
                variant=row["variant"],
                gmacs=float(row["gmacs"]),
                top1=float(row["top1"]),
                top5=float(row["top5"]),
            )
            if not (all(math.isfinite(v) for v in (rec.gmacs, rec.top1, rec.top5)) and 0 <= rec.top1 <= 100):
                raise ValueError(f"{path}: row {config_id} holds an invalid value: {row}")
            rows.append(rec)
    return rows
