"""Train images/s of an SN-Net path on a GPU: SNNet vs a hand-written network, eager and compiled.

The config is the DeiT-S->B stitch whose GMACs lie closest to the middle of the two anchors'.
Four modes, each pair interleaved step by step so noise hits both alike:

  eager      SNNet (selected config) vs the hand-written path (bench/paths.py), bf16 weights (the
             training precision policy, snnet_ray.precision)
  blocks     the same after `torch.compile` of every transformer block ("regional" compilation:
             every config runs compiled blocks, no recompile per config); compile time is the
             first steps' extra time over the median step

Prints one table, writes bench/out/gpu_train_throughput.json, ends with the RESULT line (the
SNNet / hand-written speed ratio, eager). Reference on one H200 (DESIGN §5): DeiT-S 4774 and
DeiT-B 2621 train images/s at batch 128, bf16, eager.

    python bench/gpu_train_throughput.py                       # on a GPU
    python bench/gpu_train_throughput.py --device cpu --img-size 64 --batch 8 --steps 3   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from snnet_ray import SNNet
from snnet_ray.precision import PrecisionPolicy

sys.path.insert(0, str(Path(__file__).parent / "lib"))
from hand_written import HandWrittenPath


def middle_stitch(model: SNNet, front: int, back: int) -> int:
    """The front->back stitch whose GMACs are closest to the midpoint of the two anchors'."""
    target = (model.cost(front).gmacs + model.cost(back).gmacs) / 2
    stitches = [c for c in model.configs if c.anchors == (front, back)]
    return min(stitches, key=lambda c: abs(model.cost(c.id).gmacs - target)).id


def make_step(module: nn.Module, device: torch.device):
    """A train step of `module` as it is held (the precision policy casts weights beforehand)."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(module(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def measure(pair: dict, x: torch.Tensor, y: torch.Tensor, warmup: int, steps: int) -> dict:
    """Interleaved steps of each module in `pair`; images/s from the median step, warm-up time kept."""
    times: dict[str, list[float]] = {name: [] for name in pair}
    for _ in range(warmup + steps):
        for name, step in pair.items():
            times[name].append(step(x, y))
    out = {}
    for name, ts in times.items():
        median = statistics.median(ts[warmup:])
        out[name] = {
            "images_per_s": len(x) / median,
            "step_ms": median * 1e3,
            "warmup_extra_s": max(sum(ts[:warmup]) - warmup * median, 0.0),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-blocks rows")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gpu_train_throughput.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    policy = PrecisionPolicy.for_device(device)  # what training runs: bf16 weights on GPUs
    torch.manual_seed(0)
    model = SNNet.from_timm(
        ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"],
        img_size=args.img_size,
        num_classes=1000,
    )
    model = policy.cast_model(model, device)
    cfg_id = middle_stitch(model, 1, 2)
    model.select(cfg_id)
    model.train()
    hand = HandWrittenPath(model, cfg_id).train()
    x = policy.cast_input(torch.randn(args.batch, 3, args.img_size, args.img_size), device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    rows = []
    pair = {"snnet": make_step(model, device), "hand": make_step(hand, device)}
    eager = measure(pair, x, y, args.warmup, args.steps)
    rows.append({"mode": "eager", **{f"{k}_{m}": v for k, r in eager.items() for m, v in r.items()}})
    if not args.no_compile:
        model.compile_blocks()  # regional compilation: the blocks both networks share
        compiled = measure(pair, x, y, args.warmup, args.steps)
        rows.append({"mode": "blocks compiled", **{f"{k}_{m}": v for k, r in compiled.items() for m, v in r.items()}})

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cost = model.cost(cfg_id)
    print(
        f"{name}, config {model.configs[cfg_id].name} ({model.describe(cfg_id)}), {cost.gmacs:.2f} GMACs, "
        f"batch {args.batch}, {args.img_size}px, {policy.describe()}, median of {args.steps}"
    )
    header = f"{'mode':<16} {'SNNet img/s':>11} {'hand img/s':>10} {'ratio':>6}"
    print(f"{header} {'SNNet warm-up s':>15} {'hand warm-up s':>14}")
    for r in rows:
        r["ratio"] = r["snnet_images_per_s"] / r["hand_images_per_s"]
        print(
            f"{r['mode']:<16} {r['snnet_images_per_s']:>11.0f} {r['hand_images_per_s']:>10.0f} {r['ratio']:>6.3f} "
            f"{r['snnet_warmup_extra_s']:>15.1f} {r['hand_warmup_extra_s']:>14.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": name, "config": model.configs[cfg_id].name, "rows": rows}, indent=1))
    print(f"RESULT snnet_vs_hand_train_speed {rows[0]['ratio']:.3f} target >= 0.95")


if __name__ == "__main__":
    main()
