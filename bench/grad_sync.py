"""Exposed gradient reduction per step: the old after-backward design vs the global release order.

Old design (`OrderedGradients`, replaced): every parameter is read through one autograd node whose
backward runs after the whole backward pass, so DeepSpeed's buckets are reduced only then, all
parameters (zeros included), nothing overlapped; one 5e8-element bucket. New design
(`GlobalOrderGradients`): the union of this step's paths over all ranks, released in one global
order during the backward pass, so DeepSpeed's buckets (sized to the model, `overlap_comm`) reduce
while the rest of the backward pass runs.

1. Measured, 2 CPU ranks (gloo, DeepSpeed ZeRO-2, a small DeiT family, uniform sampler): time per
   micro-step of each design against the same micro-steps without any reduction (plain autograd).
   Exposed fraction = (design - compute) / design. CPU tensors have no streams, so DeepSpeed's
   `overlap_comm` cannot hide anything here: this row measures the release mechanism's own cost
   and the bytes each design sends (union vs every parameter), not the overlap.
2. Modelled, 8 and 64 H200s, DeiT-Ti/S/B (per-config step times measured on one H200,
   ../shared/data/deit_ti_s_b_h200_step_ms.json): a step's compute is its slowest rank's config;
   the backward pass is 2/3 of it and produces gradients at an even rate in release order; a ring
   all-reduce of B bytes over n GPUs takes 2(n-1)/n x B / bus bandwidth, buckets one after the
   other. Stated link bandwidths (NCCL all-reduce bus bandwidth): 8 GPUs in one NVLink node
   360 GB/s; 64 GPUs over 8 nodes with 8x400 Gb/s InfiniBand per node, the ring bound by the
   inter-node link: 45 GB/s. Gradients reduced in fp32 (the precision policy's default).
   Old: everything after the backward pass is exposed. New: what the last bucket leaves after the
   backward pass ends.

    python bench/grad_sync.py [--micro-steps 8] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

_TABLE = Path("shared") / "data" / "deit_ti_s_b_h200_step_ms.json"
# ../shared next to the checkout (a worktree may sit one level deeper)
STEP_MS = next((p / _TABLE for p in Path(__file__).resolve().parents if (p / _TABLE).is_file()), _TABLE)
DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
SMALL = (
    [
        ("deit_tiny_patch16_224", dict(embed_dim=96, depth=6, num_heads=2)),
        ("deit_small_patch16_224", dict(embed_dim=192, depth=6, num_heads=4)),
        ("deit_base_patch16_224", dict(embed_dim=256, depth=6, num_heads=4)),
    ],
    dict(img_size=32, patch_size=8, num_classes=100),
)
LINKS_GB_S = {8: 360.0, 64: 45.0}
BACKWARD_SHARE = 2 / 3


class _OldGate(torch.autograd.Function):
    """The replaced design: all parameters pass one node whose backward runs after the whole pass."""

    @staticmethod
    def forward(ctx: Any, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return grads


class OldOrderedGradients(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        gated = _OldGate.apply(*[p for _, p in named])
        return torch.func.functional_call(self.model, {n: g for (n, _), g in zip(named, gated)}, (x,))


def _worker(rank: int, port: int, args: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    from snnet_ray import SNNet
    from snnet_ray.train.deepspeed_config import DeepSpeedConfig
    from snnet_ray.train.engine import GlobalOrderGradients, select, unwrap
    from snnet_ray.train.samplers import build_sampler

    def build(design: str):
        torch.manual_seed(0)
        model = SNNet.from_timm(*SMALL[:1], **SMALL[1])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if design == "compute":
            return model, opt
        old = design == "old"
        ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=args["batch"], overlap_comm=not old,
                             reduce_bucket_size=500_000_000 if old else None)
        module = OldOrderedGradients(model) if old else GlobalOrderGradients(model)
        n = sum(p.numel() for p in model.parameters())
        engine, *_ = deepspeed.initialize(model=module, optimizer=opt, config=ds.to_dict(2, "cpu", num_parameters=n))
        return engine, None

    costs = [1.0] * 23
    times: dict[str, list[float]] = {"compute": [], "old": [], "new": []}
    x = torch.randn(args["batch"], 3, 32, 32)
    y = torch.randint(0, 100, (args["batch"],))
    built = {d: build(d) for d in times}
    costs = [1.0] * len(unwrap(built["new"][0]).configs)
    for _ in range(args["reps"]):
        for design, (eng, opt) in built.items():  # interleaved
            sampler = build_sampler("uniform", costs, world_size=2, rank=rank, seed=3)
            start = time.perf_counter()
            for micro in range(args["micro_steps"]):
                cfg = sampler.sample(micro)
                if design == "compute":
                    eng.select(cfg)
                    torch.nn.functional.cross_entropy(eng(x), y).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                else:
                    if design == "new":
                        select(eng, cfg, sampler.assignment(micro))
                    else:
                        eng.module.model.select(cfg)  # the old wrapper: unwrap() no longer knows it
                    eng.backward(torch.nn.functional.cross_entropy(eng(x), y))
                    eng.step()
            times[design].append((time.perf_counter() - start) / args["micro_steps"])
    if rank == 0:
        Path(out).write_text(json.dumps(times))


def measure(args: argparse.Namespace) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/times.json"
        mp.start_processes(_worker, args=(port, vars(args), out), nprocs=2, start_method="spawn")
        times = json.loads(Path(out).read_text())
    return {k: min(v) for k, v in times.items()}


def model_exposed(
    n: int, bucket: int, old: bool, seed: int = 0, steps: int = 300, bus_gb_s: float | None = None
) -> dict[str, float]:
    """Mean exposed reduction ms and its share of the step, `n` GPUs, DeiT-Ti/S/B, uniform sampler,
    at `bus_gb_s` all-reduce bus bandwidth (default: the H200 figure of LINKS_GB_S for `n`)."""
    from snnet_ray import SNNet
    from snnet_ray.train.engine import GlobalOrderGradients

    model = SNNet.from_timm(DEIT, device="meta")
    wrapped = GlobalOrderGradients(model)
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    step_ms = [c["step_ms"] for c in json.loads(STEP_MS.read_text())["configs"]]
    assert len(step_ms) == len(model.configs)
    g = torch.Generator().manual_seed(seed)
    bw = (bus_gb_s or LINKS_GB_S[n]) * 1e9
    exposed, total = 0.0, 0.0
    for _ in range(steps):
        cfgs = torch.randint(0, len(step_ms), (n,), generator=g).tolist()
        compute = max(step_ms[c] for c in cfgs)
        backward = BACKWARD_SHARE * compute
        elements = sum(sizes.values()) if old else sum(sizes[k] for k in wrapped.chained_names(cfgs))
        comm = 2 * (n - 1) / n * elements * 4 / bw * 1e3  # ms, fp32
        if old:
            hidden_end = comm  # all of it after the backward pass
        else:
            buckets = max(1, -(-elements // bucket))
            per = comm / buckets
            finish = 0.0
            for k in range(buckets):
                ready = backward * (k + 1) / buckets
                finish = max(finish, ready) + per
            hidden_end = max(0.0, finish - backward)
        exposed += hidden_end
        total += compute + hidden_end
    return {"exposed_ms": exposed / steps, "fraction": exposed / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "grad_sync.json")
    parser.add_argument("--bus-bw-json", type=Path, default=None,
                        help="bench/allreduce_bw.py's JSON from the cluster: model with its measured bus "
                             "bandwidth instead of the H200 figures")  # fmt: skip
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from snnet_ray import SNNet
    from snnet_ray.train.deepspeed_config import DeepSpeedConfig

    if not STEP_MS.is_file():
        sys.exit(f"per-config step times not found: {_TABLE} (looked in every folder above bench/)")
    t = measure(args)
    cpu = {d: (t[d] - t["compute"]) / t[d] for d in ("old", "new")}
    n_params = sum(p.numel() for p in SNNet.from_timm(DEIT, device="meta").parameters())
    bucket = DeepSpeedConfig().bucket_size(n_params)
    links = dict(LINKS_GB_S)
    if args.bus_bw_json is not None:  # the cluster's own fabric, as bench/allreduce_bw.py measured it
        measured = float(json.loads(args.bus_bw_json.read_text())["model_bus_bw_gbps"])
        if not 0 < measured < 1e5:
            sys.exit(f"{args.bus_bw_json}: model_bus_bw_gbps={measured} is not a bandwidth in GB/s")
        links = {n: measured for n in links}
    modelled = {
        (n, design): model_exposed(n, 500_000_000 if design == "old" else bucket, design == "old",
                                   bus_gb_s=links[n])
        for n in (8, 64)
        for design in ("old", "new")
    }
    print(f"{'setting':<44}{'old exposed':>14}{'new exposed':>14}")
    print(f"{'2 CPU ranks, measured (ms/micro-step, share)':<44}"
          f"{(t['old'] - t['compute']) * 1e3:>8.1f} {cpu['old']:>5.2f}{(t['new'] - t['compute']) * 1e3:>8.1f} "
          f"{cpu['new']:>5.2f}")
    for n in (8, 64):
        o, w = modelled[(n, "old")], modelled[(n, "new")]
        source = "measured" if args.bus_bw_json is not None else "H200"
        print(f"{f'{n} GPUs modelled, {source} {links[n]:.0f} GB/s (ms/step, share)':<44}"
              f"{o['exposed_ms']:>8.1f} {o['fraction']:>5.2f}{w['exposed_ms']:>8.1f} {w['fraction']:>5.2f}")
    print(f"(bucket {bucket / 1e6:.1f} M elements of {n_params / 1e6:.1f} M; CPU compute-only micro-step "
          f"{t['compute'] * 1e3:.1f} ms)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cpu_ms": {k: v * 1e3 for k, v in t.items()}, "cpu_exposed_fraction": cpu,
        "modelled": {f"{n}_{d}": v for (n, d), v in modelled.items()},
        "links_gb_s": links, "bucket_elements": bucket, "args": vars(args),
    }, indent=1, default=str))
    print(f"RESULT exposed_grad_reduction_fraction_64gpu {modelled[(64, 'new')]['fraction']:.3f} "
          f"target <= {modelled[(64, 'old')]['fraction']:.3f}")


if __name__ == "__main__":
    main()
