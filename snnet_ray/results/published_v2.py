"""SN-Netv2's published per-config results (a thin view of `snnet_ray.reference.published`).

    rows = load_published_v2("deit3_s_l")   # 134 PublishedV2Config, config_id order
    rows[0].gmacs, rows[0].top1              # 4.608, 82.906 (DeiT3-S alone)

The data is the packaged release `snnetv2_deit3_s_l` (`snnet-ray results compare --published
snnetv2_deit3_s_l`; made by `scripts/make_reference_data.py --v2-csv`): ImageNet-1k top-1/top-5
of every config of the DeiT3-S/L SN-Netv2 (LoRA rank 64, 50 epochs) from ziplab/SN-Netv2@dd17607
`classification/results/stitches_res_s_l.txt`, with the official fvcore GMACs (LayerNorms
included, ~0.2% above `SNNet.cost`). Configs are named and numbered as `SNNet(rule="snnetv2")`
does, so a run over the same anchors lines up config by config; `official_id` is the id in the
official code (which skips one never-trained config). Only DeiT3-S/L has a published results
file; the S/B and B/L checkpoints were released without one.
"""

from __future__ import annotations

from dataclasses import dataclass

from snnet_ray.reference.published import load_published

__all__ = ["PUBLISHED_V2", "PublishedV2Config", "list_published_v2", "load_published_v2"]

PUBLISHED_V2: dict[str, dict] = {
    "deit3_s_l": {
        "release": "snnetv2_deit3_s_l",
        "anchors": ["deit3_small_patch16_224.fb_in22k_ft_in1k", "deit3_large_patch16_224.fb_in22k_ft_in1k"],
        "rule": "snnetv2",
        "lora_r": 64,
        "preset": "deit3_s_l_imagenet",
        "source": "ziplab/SN-Netv2@dd17607 classification/results/stitches_res_s_l.txt",
    },
}
"""Published SN-Netv2 result sets: the packaged release, the SN-Net it belongs to, its source."""


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
    from snnet_ray.results.published import _config_name

    pub = load_published(PUBLISHED_V2[name]["release"])
    return [
        PublishedV2Config(
            config_id=c.id,
            official_id=c.id if c.official_id is None else c.official_id,
            name=_config_name(pub, c.id),
            variant=c.variant or c.kind,
            gmacs=c.gmacs,
            top1=c.acc1,
            top5=c.acc5 if c.acc5 is not None else float("nan"),
        )
        for c in pub.configs
    ]
