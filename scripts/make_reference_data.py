"""Regenerate the packaged reference data from the official SN-Net listings (run by hand, offline).

    python scripts/make_reference_data.py /path/to/official_snnet

Writes `snnet_ray/reference/published/<name>.json` (published per-config results with each
config's official layout) and `tests/data/official_<name>_keys.json` (state-dict key, shape and
dtype of each official checkpoint, for the import test). The inputs are the listings derived
from ziplab/SN-Net (Apache-2.0) at commit c2dcf306, whose README documents every field.

    python scripts/make_reference_data.py --v2-csv snnetv2_deit3_s_l.csv

One-off conversion of SN-Netv2's published DeiT3-S/L results (the per-config listing made from
ziplab/SN-Netv2@dd17607 `classification/results/stitches_res_s_l.txt`, Apache-2.0: columns
official_id, name, variant, gmacs, top1, top5 in `rule='snnetv2'` config order) into
`snnet_ray/reference/published/snnetv2_deit3_s_l.json`, the same format as v1's releases.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    # name: (listing, csv family, results file, title, final_norm)
    "deit": ("deit_state_dict.json", "deit", "stitching_deit/results/stitches_res.txt", "SN-Net DeiT-Ti/S/B"),
    "swin": (
        "swin_state_dict.json",
        "swin",
        "stitching_swin/results/stitches_res.txt",
        "SN-Net Swin-Ti/S/B (ImageNet-22k->1k anchors)",
    ),
    "resnet": (
        "resnet18_resnet50_state_dict.json",
        "resnet18_resnet50",
        "stitching_resnet_swin/results/stitches_res_resnet_18_50.txt",
        "SN-Net ResNet-18/50",
    ),
    "resnet_swin": (
        "resnet18_swin_ti_state_dict.json",
        "resnet18_swin_ti",
        "stitching_resnet_swin/results/stitches_res_resnet_18_swin_ti.txt",
        "SN-Net ResNet-18 -> Swin-Ti",
    ),
}
TIMM_NAMES = {"resnet18_swin_ti": ["resnet18", "swin_tiny_patch4_window7_224"]}


def _num(x: str) -> float | int | None:
    if x == "":
        return None
    return float(x) if any(c in x for c in ".e") else int(x)


def main(src: Path) -> None:
    rows = list(csv.DictReader((src / "all_configs.csv").open()))
    for name, (listing, fam, results, title) in FAMILIES.items():
        meta = json.loads((src / listing).read_text())
        anchors = meta["constructor"]["anchors"] if isinstance(meta["constructor"].get("anchors"), list) else None
        if anchors is None:
            anchors = [a["timm_name"] for a in meta["anchors"]] if "timm_name" in meta["anchors"][0] else None
        if anchors is None or fam in TIMM_NAMES:
            anchors = TIMM_NAMES.get(fam) or [
                "swin_tiny_patch4_window7_224",
                "swin_small_patch4_window7_224",
                "swin_base_patch4_window7_224",
            ]
        configs = []
        for r in (r for r in rows if r["family"] == fam):
            stitch = r["kind"] == "stitch"
            configs.append(
                {
                    "id": int(r["id"]),
                    "kind": r["kind"],
                    "anchors": [int(r["front"]), int(r["back"])] if stitch else [int(r["front"])],
                    "stage": int(r["stage"]) if r["stage"] else None,  # None: single-stage anchors (DeiT)
                    "positions": [[int(r["j"]), int(r["l"])]] if stitch else [],
                    "layer_key": r["stitch_layer_key"] or None,
                    "final_norm": {"yes": True, "no": False}.get(r["applies_back_final_norm"]),
                    "acc1": _num(r["published_acc1"]),
                    "acc5": _num(r["published_acc5"]),
                    "gmacs": _num(r["published_flops"]) / 1e9,
                    "params": _num(r["published_params"]),
                }
            )
        out = {
            "format": "snnet-ray/published/1",
            "name": name,
            "title": title,
            "dataset": "ImageNet-1k validation (50,000 images)",
            "metric": "top-1 (%)",
            "anchors": anchors,
            "space": {"rule": "paper", "kernel_size": 2, "stride": 1, "nearest": True, "final_norm": "v1"},
            "gmacs_note": "fvcore FlopCountAnalysis at 1x3x224x224 / 1e9 (one multiply-add = 1; it also counts "
            "5 per LayerNorm element and other elementwise ops, so it runs a little above MACs)",
            "source": {
                "repo": "ziplab/SN-Net",
                "commit": meta["source"]["commit"],
                "file": results,
                "license": "Apache-2.0",
                "checkpoint": meta["checkpoint"]["released_file"],
                "checkpoint_url": meta["checkpoint"]["release_url_text"],
                "state_dict_location": meta["checkpoint"]["state_dict_location"],
            },
            "configs": configs,
        }
        (ROOT / "snnet_ray/reference/published" / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
        keys = [
            [e["key"], e["shape"], e["dtype"]] + ([True] if e.get("split_bn_aux") else []) for e in meta["state_dict"]
        ]
        (ROOT / "tests/data" / f"official_{name}_keys.json").write_text(
            json.dumps({"location": meta["checkpoint"]["state_dict_location"], "keys": keys}) + "\n"
        )
        print(name, len(configs), "configs", len(keys), "keys")


V2_DEIT3_S_L = {
    "name": "snnetv2_deit3_s_l",
    "title": "SN-Netv2 DeiT3-S/L (LoRA r=64, 50 epochs)",
    "anchors": ["deit3_small_patch16_224.fb_in22k_ft_in1k", "deit3_large_patch16_224.fb_in22k_ft_in1k"],
    "space": {"rule": "snnetv2", "kernel_size": 2, "stride": 1, "nearest": True, "final_norm": "always", "lora_r": 64},
    "source": {
        "repo": "ziplab/SN-Netv2",
        "commit": "dd17607",
        "file": "classification/results/stitches_res_s_l.txt",
        "license": "Apache-2.0",
        "preset": "deit3_s_l_imagenet",
    },
}


def convert_v2_csv(path: Path) -> None:
    """SN-Netv2's per-config CSV (see the module docstring) -> the published JSON format."""
    configs = []
    for i, r in enumerate(csv.DictReader(path.open(newline=""))):
        name, variant = r["name"], r["variant"]
        if variant == "anchor":
            anchors, positions = [int(name.removeprefix("anchor"))], []
        else:  # '1-0-1:3,4;6,10': the route's anchors, then (j, l) of every switch
            chain, _, hops = name.partition(":")
            anchors = [int(a) for a in chain.split("-")]
            positions = [[int(v) for v in hop.split(",")] for hop in hops.split(";")]
        configs.append(
            {
                "id": i,
                "kind": "anchor" if variant == "anchor" else "stitch",
                "anchors": anchors,
                "stage": None,  # single-stage anchors (DeiT III)
                "positions": positions,
                "variant": "" if variant == "anchor" else variant,
                "official_id": int(r["official_id"]),
                "layer_key": None,
                "final_norm": True,
                "acc1": float(r["top1"]),
                "acc5": float(r["top5"]),
                "gmacs": float(r["gmacs"]),
                "params": None,
            }
        )
    out = {
        "format": "snnet-ray/published/1",
        **{k: V2_DEIT3_S_L[k] for k in ("name", "title")},
        "dataset": "ImageNet-1k validation (50,000 images)",
        "metric": "top-1 (%)",
        **{k: V2_DEIT3_S_L[k] for k in ("anchors", "space")},
        "gmacs_note": "official fvcore FLOPs / 1e9 (one multiply-add = 1; LayerNorms counted too, ~0.2% above "
        "SNNet.cost with LoRA folded)",
        "source": V2_DEIT3_S_L["source"],
        "configs": configs,
    }
    dest = ROOT / "snnet_ray/reference/published" / f"{V2_DEIT3_S_L['name']}.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(V2_DEIT3_S_L["name"], len(configs), "configs")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--v2-csv":
        convert_v2_csv(Path(sys.argv[2]))
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/official_snnet"))
