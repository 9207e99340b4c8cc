"""One-pass evaluation of every config vs a decode-once config-by-config loop, DeiT-Ti/S/B 224 px.

Both sides see the same decoded batch (so decoding is out of the comparison) and evaluate all 71
configs. The loop runs each config's whole path; one pass runs each anchor's prefix once and walks
each anchor's blocks once, stitches joining their back anchor's walk at their first back block.
The loop's multiply-adds over one pass's are the MACs bound: the speed-up one pass could reach if
time followed MACs. The figure is the measured speed-up as a fraction of that bound (>= 0.95:
batching the stitches' suffixes costs nothing; > 1: it even runs faster per MAC). Block calls per
batch are counted with forward hooks; the per-stitch-suffix design this replaced made
3 anchors x 12 blocks + every stitch's own suffix of calls. A and B interleaved per repetition;
random weights (counts must be identical, not good).

    python bench/eval_one_pass.py [--images 2] [--reps 1] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from snnet_ray import SNNet
from snnet_ray.eval import evaluate_batch, evaluate_batch_by_config
from snnet_ray.stitching.cost import path_pieces

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from tiny_families import TINY_VIT

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


def macs(model: SNNet) -> tuple[float, float]:
    """(one-pass, config-by-config) GMACs per image over all configs."""
    loop = sum(model.cost(c.id).gmacs for c in model.configs)
    one = sum(model.cost(i).gmacs for i in range(len(model.anchors)))
    seen: set[tuple[int, int]] = set()
    for c in model.configs[len(model.anchors) :]:
        (_, back), (j, l) = c.anchors, c.positions[0]
        if (c.layer, j) not in seen:  # a stitching layer's output is shared by (layer, front block)
            one += model._layer_costs[c.layer][0] / 1e9
            seen.add((c.layer, j))
        pieces = path_pieces(model.anchors[back], c.stage, l, "back")
        one += sum(model._profiles[back].macs[k] for k in pieces) / 1e9
    return one, loop


def count_block_calls(model: SNNet) -> list[int]:
    calls = [0]
    for anchor in model.anchors:
        for _, _, blk in anchor.blocks():
            blk.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def per_suffix_calls(model: SNNet) -> int:
    """Block calls per batch of the design this replaced: each anchor once + each stitch's suffix."""
    calls = sum(sum(a.stage_depths) for a in model.anchors)
    for c in model.configs[len(model.anchors) :]:
        (_, back), (_, l) = c.anchors, c.positions[0]
        calls += sum(1 for k in path_pieces(model.anchors[back], c.stage, l, "back") if k.startswith("block."))
    return calls


def same_counts(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (a[k].samples, a[k].top1_correct, a[k].top5_correct) == (b[k].samples, b[k].top1_correct, b[k].top5_correct)
        for k in a
    )


def run(name: str, model: SNNet, images: torch.Tensor, labels: torch.Tensor, reps: int) -> dict:
    calls = count_block_calls(model.eval())
    one_macs, loop_macs = macs(model)
    t_one, t_loop = [], []
    with torch.no_grad():
        evaluate_batch(model, images[:1], labels[:1])  # warm-up (allocator, lazy inits)
        for _ in range(reps):
            calls[0] = 0
            start = time.perf_counter()
            one = evaluate_batch(model, images, labels)
            t_one.append(time.perf_counter() - start)
            one_calls = calls[0]
            calls[0] = 0
            start = time.perf_counter()
            loop = evaluate_batch_by_config(model, images, labels)
            t_loop.append(time.perf_counter() - start)
            loop_calls = calls[0]
    speedup = min(t_loop) / min(t_one)
    bound = loop_macs / one_macs
    return {
        "setting": name,
        "configs": len(model.configs),
        "images": len(images),
        "block_calls_one_pass": one_calls,
        "block_calls_per_suffix_design": per_suffix_calls(model),
        "block_calls_loop": loop_calls,
        "gmacs_one_pass": one_macs * len(images),
        "gmacs_loop": loop_macs * len(images),
        "s_one_pass": min(t_one),
        "s_loop": min(t_loop),
        "speedup": speedup,
        "macs_bound": bound,
        "vs_bound": speedup / bound,
        "counts_identical": same_counts(one, loop),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images in the (decoded) batch")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="the tiny DeiT test family at 32 px instead (seconds)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "eval_one_pass.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.tiny:
        anchors, kwargs, size, name = TINY_VIT[0], TINY_VIT[1], 32, "tiny DeiT 32px"
    else:
        anchors, kwargs, size, name = DEIT, {}, 224, "DeiT-Ti/S/B 224px"
    model = SNNet.from_timm(anchors, **kwargs)
    images = torch.randn(args.images, 3, size, size)
    labels = torch.randint(0, model.num_classes, (args.images,))
    row = run(name, model, images, labels, args.reps)

    print(f"{'setting':<20}{'configs':>8}{'calls/batch':>12}{'per-suffix':>11}{'loop':>6}"
          f"{'one-pass s':>11}{'loop s':>9}{'speedup':>9}{'MACs bound':>11}{'of bound':>9}{'counts':>8}")
    print(f"{row['setting']:<20}{row['configs']:>8}{row['block_calls_one_pass']:>12}"
          f"{row['block_calls_per_suffix_design']:>11}{row['block_calls_loop']:>6}{row['s_one_pass']:>11.2f}"
          f"{row['s_loop']:>9.2f}{row['speedup']:>9.2f}{row['macs_bound']:>11.2f}{row['vs_bound']:>9.2f}"
          f"{'same' if row['counts_identical'] else 'DIFFER':>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": [row], "args": vars(args)}, indent=1, default=str))
    metric = "deit_one_pass_vs_macs_bound" if not args.tiny else "tiny_one_pass_vs_macs_bound"
    print(f"RESULT {metric} {row['vs_bound'] if row['counts_identical'] else 0.0:.2f} target >= 0.95")


if __name__ == "__main__":
    main()
