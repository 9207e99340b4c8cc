"""One-pass evaluation of every config vs the config-by-config loop: wall time, MACs, counts.

The config-by-config loop is how SN-Net was evaluated: for each config, a full pass over the
validation loader (decode, transform, forward). One pass decodes each batch once, runs each
anchor once and branches every stitch from the saved activations. Both read the same shards
through the same validation pipeline; the counts must be identical.

Two settings, A and B interleaved per repetition:
  tiny   a tiny DeiT family (32 px digits shards, the demo/test setting): data-bound, like a GPU
  deit   DeiT-Ti/S/B at 224 px, random weights, a few batches of 224 px JPEG shards: on this CPU
         compute-bound, so the speed-up approaches the MACs ratio

    python bench/eval_one_pass.py [--deit-batches 1] [--deit-batch 4] [--skip-deit]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snnet_ray import SNNet
from snnet_ray.data import DataConfig, build_val_loader, write_digits_shards, write_imagefolder_shards
from snnet_ray.eval import ConfigCounts, evaluate_batch, evaluate_batch_by_config
from snnet_ray.stitching.cost import path_pieces

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from tiny_families import TINY_VIT


def one_pass(model: SNNet, loader) -> dict[int, ConfigCounts]:
    totals: dict[int, ConfigCounts] = {}
    for batch in loader:
        for cfg_id, c in evaluate_batch(model, batch.images, batch.targets).items():
            totals.setdefault(cfg_id, ConfigCounts()).add(c)
    return totals


def by_config(model: SNNet, loader) -> dict[int, ConfigCounts]:
    totals: dict[int, ConfigCounts] = {}
    for cfg in model.configs:
        for batch in loader:  # a full pass over the data per config, decoding included
            for cfg_id, c in evaluate_batch_by_config(model, batch.images, batch.targets, [cfg.id]).items():
                totals.setdefault(cfg_id, ConfigCounts()).add(c)
    return totals


def macs_per_image(model: SNNet) -> tuple[float, float]:
    """(one-pass, config-by-config) GMACs per image for all configs."""
    by_cfg = sum(model.cost(c.id).gmacs for c in model.configs)
    single = sum(model.cost(i).gmacs for i in range(len(model.anchors)))
    seen: set[tuple[int, int]] = set()
    for c in model.configs[len(model.anchors) :]:
        (_, back), (j, l) = c.anchors, c.positions[0]
        if (c.layer, j) not in seen:  # the stitching layer's output is shared by (layer, j)
            single += model._layer_costs[c.layer][0] / 1e9
            seen.add((c.layer, j))
        single += sum(model._profiles[back].macs[k] for k in path_pieces(model.anchors[back], c.stage, l, "back")) / 1e9
    return single, by_cfg


def timed(fn: Callable, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def same_counts(a: dict[int, ConfigCounts], b: dict[int, ConfigCounts]) -> bool:
    return a.keys() == b.keys() and all(
        (a[k].samples, a[k].top1_correct, a[k].top5_correct) == (b[k].samples, b[k].top1_correct, b[k].top5_correct)
        and abs(a[k].loss_sum - b[k].loss_sum) <= 1e-4 * max(1.0, abs(b[k].loss_sum))
        for k in a
    )


def bench(name: str, model: SNNet, loader, reps: int) -> dict:
    model.eval()
    t_one, t_cfg = [], []
    identical = True
    with torch.no_grad():
        for _ in range(reps):
            a, counts_one = timed(one_pass, model, loader)  # interleaved A, B
            b, counts_cfg = timed(by_config, model, loader)
            t_one.append(a)
            t_cfg.append(b)
            identical &= same_counts(counts_one, counts_cfg)
    macs_one, macs_cfg = macs_per_image(model)
    one, cfg = min(t_one), min(t_cfg)
    return {
        "setting": name,
        "configs": len(model.configs),
        "images": loader.num_samples,
        "one_pass_s": one,
        "by_config_s": cfg,
        "speedup": cfg / one,
        "gmacs_per_image_one_pass": macs_one,
        "gmacs_per_image_by_config": macs_cfg,
        "macs_ratio": macs_cfg / macs_one,
        "decodes_ratio": len(model.configs),
        "identical_counts": identical,
    }


def tiny_setting(work: Path, reps: int) -> dict:
    root = work / "digits"
    write_digits_shards(root)
    anchors, kwargs = TINY_VIT
    model = SNNet.from_timm(anchors, **kwargs)
    cfg = DataConfig.from_timm(str(root), model.data_config, val_batch_size=128, num_workers=1)
    return bench("tiny ViT, digits 32px", model, build_val_loader(cfg, rank=0, world_size=1), reps)


def deit_setting(work: Path, batches: int, batch: int, reps: int) -> dict:
    src = work / "imagefolder"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in range(2):
            (src / split / f"class{cls}").mkdir(parents=True)
            for i in range(batches * batch // 2 + 1 if split == "val" else 1):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, format="JPEG")
                (src / split / f"class{cls}" / f"img{i}.JPEG").write_bytes(buf.getvalue())
    write_imagefolder_shards(src, work / "deit_shards", workers=1, progress=False)
    model = SNNet.from_timm(
        ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"], num_classes=2
    )
    cfg = DataConfig.from_timm(str(work / "deit_shards"), model.data_config, val_batch_size=batch, num_workers=0)
    return bench("DeiT-Ti/S/B, 224px", model, build_val_loader(cfg, rank=0, world_size=1), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--deit-batches", type=int, default=1)
    parser.add_argument("--deit-batch", type=int, default=4)
    parser.add_argument("--skip-deit", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "eval_one_pass.json")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(tiny_setting(Path(tmp), args.reps))
        if not args.skip_deit:
            rows.append(deit_setting(Path(tmp), args.deit_batches, args.deit_batch, 1))

    print(f"one pass vs config-by-config, {torch.get_num_threads()} threads, best of {args.reps}")
    header = f"{'setting':<24} {'configs':>7} {'images':>6} {'one-pass s':>10} {'by-config s':>11} {'speed-up':>8} "
    print(header + f"{'GMACs/img 1p':>12} {'GMACs/img cfg':>13} {'MACs ratio':>10} {'identical':>9}")
    for r in rows:
        print(
            f"{r['setting']:<24} {r['configs']:>7} {r['images']:>6} {r['one_pass_s']:>10.2f} {r['by_config_s']:>11.2f} "
            f"{r['speedup']:>8.2f} {r['gmacs_per_image_one_pass']:>12.2f} {r['gmacs_per_image_by_config']:>13.2f} "
            f"{r['macs_ratio']:>10.2f} {r['identical_counts']!s:>9}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1, default=str))
    tiny = rows[0]
    assert all(r["identical_counts"] for r in rows), "one-pass counts differ from config-by-config"
    print(f"RESULT one_pass_speedup {tiny['speedup']:.2f} target >= 3")


if __name__ == "__main__":
    main()
