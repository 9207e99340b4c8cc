"""All-reduce bus bandwidth for 1 MiB - 1 GiB messages: the figure the gradient-sync step-time model uses.

Every training step all-reduces the gradients (ZeRO-2: ~236 MB of bf16 gradients for DeiT-Ti/S/B, in
buckets). The step-time model of gradient sync charges `bytes x 2(n-1)/n / bus bandwidth` per step,
so it needs the bus bandwidth at gradient-bucket sizes on the real fabric; this script measures it
the way nccl-tests does (algorithm bandwidth x 2(n-1)/n), through snnet_ray/collectives.py.

    python bench/allreduce_bw.py                          # every local GPU (NCCL), else 2 CPU processes (gloo)
    torchrun --nnodes 2 --nproc-per-node 8 ... bench/allreduce_bw.py   # across nodes: the fabric itself
    python bench/allreduce_bw.py --procs 2 --max-mb 4     # the suite's tiny CPU run

Sizes double from --min-mb to --max-mb (1 GiB on GPUs, capped at 64 MiB on CPUs). The RESULT line
compares the bus bandwidth at the gradient size (the largest size measured up to --grad-mb) with
the bandwidth that hides the whole gradient reduction of the fastest step (--step-ms) behind its
compute: 2 x grad bytes / step time (26 GB/s for 236 MB in 18 ms, DeiT-Ti on an H200).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from snnet_ray import collectives
from snnet_ray.train.network_check import bus_bandwidth_gbps, count_nodes

MIB = 1 << 20
CPU_MAX_MB = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=None, help="local processes (default: GPUs, else 2)")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPUs even where GPUs are present")
    parser.add_argument("--min-mb", type=int, default=1)
    parser.add_argument("--max-mb", type=int, default=None, help="largest message, MiB (default 1024; 64 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed all-reduces per size (default 20 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--grad-mb", type=float, default=236.0, help="gradient bytes per step, MB (ZeRO-2 DeiT-Ti/S/B)")
    parser.add_argument("--step-ms", type=float, default=18.0, help="compute of the fastest step, ms (DeiT-Ti, H200)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "allreduce_bw.json")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available() and not args.cpu
    args.backend = "nccl" if gpu else "gloo"
    args.procs = args.procs or (torch.cuda.device_count() if gpu else 2)
    args.max_mb = args.max_mb or (1024 if gpu else CPU_MAX_MB)
    if not gpu:
        args.max_mb = min(args.max_mb, CPU_MAX_MB)
    args.iters = args.iters or (20 if gpu else 5)
    if args.min_mb < 1 or args.max_mb < args.min_mb or args.iters < 1 or args.procs < 1:
        parser.error("need 1 <= --min-mb <= --max-mb, --iters >= 1 and --procs >= 1")
    return args


def sizes(min_mb: int, max_mb: int) -> list[int]:
    out, mb = [], min_mb
    while mb <= max_mb:
        out.append(mb * MIB)
        mb *= 2
    return out


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every rank: per size, the slowest rank's mean time per all-reduce."""
    world = collectives.world_size()
    rows = []
    for size in sizes(args.min_mb, args.max_mb):
        buffer = torch.ones(size // 4, dtype=torch.float32, device=device)
        for _ in range(args.warmup):
            collectives.all_reduce(buffer, device)
        collectives.barrier(device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            collectives.all_reduce(buffer, device)
        _sync(device)
        seconds = (time.perf_counter() - start) / args.iters
        seconds = float(collectives.all_reduce(torch.tensor([seconds], device=device), device, op="max").cpu()[0])
        rows.append({
            "bytes": size, "ms": seconds * 1e3, "alg_bw_gbps": size / seconds / 1e9,
            "bus_bw_gbps": bus_bandwidth_gbps(size, seconds, world),
        })
        del buffer
    return rows


def report(args: argparse.Namespace, rows: list[dict], nodes: int) -> None:
    world = collectives.world_size()
    print(f"all-reduce, {args.backend}, {world} ranks on {nodes} node(s), float32, mean of {args.iters}")
    print(f"{'size':>10} {'time ms':>10} {'algbw GB/s':>11} {'busbw GB/s':>11}")
    for r in rows:
        print(f"{r['bytes'] / MIB:>7.0f} MiB {r['ms']:>10.3f} {r['alg_bw_gbps']:>11.2f} {r['bus_bw_gbps']:>11.2f}")
    grad_bytes = args.grad_mb * 1e6
    at_grad = [r for r in rows if r["bytes"] <= grad_bytes] or rows[:1]
    model_bw = at_grad[-1]["bus_bw_gbps"]
    factor = 2 * (world - 1) / world if world > 1 else 0.0
    sync_ms = grad_bytes * factor / (model_bw * 1e9) * 1e3 if model_bw else float("inf")
    required = 2 * grad_bytes / (args.step_ms / 1e3) / 1e9
    print(f"gradient sync model: {args.grad_mb:.0f} MB at {model_bw:.2f} GB/s bus bandwidth -> {sync_ms:.1f} ms per "
          f"step at {world} ranks; hiding it behind a {args.step_ms:.0f} ms step needs {required:.1f} GB/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "backend": args.backend, "world_size": world, "nodes": nodes, "rows": rows,
        "model_bus_bw_gbps": model_bw, "model_message_bytes": at_grad[-1]["bytes"],
        "grad_sync_ms": sync_ms, "required_bus_bw_gbps": required,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }, indent=1))
    print(f"RESULT allreduce_bus_bw_gbps {model_bw:.2f} target >= {required:.1f}")


def run(rank: int, args: argparse.Namespace, port: int | None = None) -> None:
    """One rank: join (or create) the process group, measure, rank 0 reports."""
    if port is not None:  # local processes spawned here
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(args.procs), LOCAL_RANK=str(rank))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if args.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, device_id=device if device.type == "cuda" else None)
    try:
        nodes = count_nodes(device)
        rows = measure(args, device)
        if collectives.rank() == 0:
            report(args, rows, nodes)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:  # under torchrun: the group spans its nodes
        run(int(os.environ["RANK"]), args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(args, port), nprocs=args.procs, join=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
