"""SNNet train-step overhead: SNNet's selected path vs a hand-written network of the same blocks.

For a few configs of a small DeiT-like family, one train step (forward, backward, AdamW) of
`SNNet` with that config selected is timed against a plain `nn.Module` that calls the very same
blocks, stitching layer, norm and head in straight-line code. The two are interleaved step by
step so machine noise hits both alike; the figure is the speed ratio (hand-written time / SNNet
time, higher is better). Target: >= 0.95.

    python bench/step_overhead.py [--batch 32] [--steps 20] [--img-size 64]
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

sys.path.insert(0, str(Path(__file__).parent / "lib"))
from hand_written import HandWrittenPath


def train_step(module: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = nn.functional.cross_entropy(module(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "step_overhead.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    widths = (96, 128, 192)
    anchors = [("deit_tiny_patch16_224", dict(embed_dim=w, depth=6, num_heads=w // 32)) for w in widths]
    model = SNNet.from_timm(anchors, img_size=args.img_size, patch_size=8, num_classes=100).train()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 100, (args.batch,))
    picks = {
        "anchor S": 1,
        "Ti->S middle": next(c.id for c in model.configs if c.name == "0-1:2,3"),
        "S->B middle": next(c.id for c in model.configs if c.name == "1-2:2,3"),
        "S->B late": next(c.id for c in model.configs if c.name == "1-2:4,4"),
    }

    rows = []
    for label, cfg_id in picks.items():
        hand = HandWrittenPath(model, cfg_id).train()
        model.select(cfg_id)
        opt_snnet = torch.optim.AdamW(model.parameters(), lr=1e-4)
        opt_hand = torch.optim.AdamW(hand.parameters(), lr=1e-4)
        t_snnet, t_hand = [], []
        for step in range(args.warmup + args.steps):
            a = train_step(model, opt_snnet, x, y)  # interleaved: A, B, A, B, ...
            b = train_step(hand, opt_hand, x, y)
            if step >= args.warmup:
                t_snnet.append(a)
                t_hand.append(b)
        ms_snnet, ms_hand = statistics.median(t_snnet) * 1e3, statistics.median(t_hand) * 1e3
        rows.append(
            {
                "config": label,
                "name": model.configs[cfg_id].name,
                "gmacs": model.cost(cfg_id).gmacs,
                "snnet_ms": ms_snnet,
                "hand_ms": ms_hand,
                "speed_ratio": ms_hand / ms_snnet,
            }
        )

    print(
        f"train step, batch {args.batch}, {args.img_size}px, {torch.get_num_threads()} threads, median of {args.steps}"
    )
    print(f"{'config':<14} {'name':<8} {'GMACs':>6} {'SNNet ms':>9} {'hand ms':>9} {'speed ratio':>12}")
    for r in rows:
        print(
            f"{r['config']:<14} {r['name']:<8} {r['gmacs']:>6.3f} {r['snnet_ms']:>9.2f} {r['hand_ms']:>9.2f} "
            f"{r['speed_ratio']:>12.3f}"
        )
    worst = min(r["speed_ratio"] for r in rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "min_speed_ratio": worst, "args": vars(args)}, indent=1, default=str))
    print(f"RESULT snnet_step_speed_ratio {worst:.3f} target >= 0.95")


if __name__ == "__main__":
    main()
