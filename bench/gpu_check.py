"""One-command GPU check: does a DeiT-Ti/S/B SN-Net train, checkpoint, evaluate and resume on this GPU,
and how fast? (`scripts/gpu_check.sh` runs it; needs torch, torchvision, timm, deepspeed, webdataset and
SQLAlchemy; no Ray: training goes through the local launcher, `snnet-ray train --local`.)

Each figure is one function taking a `Check` (device, sizes, output folder) and returning a dict, so
more figures slot in as more functions listed in `FIGURES`:

  shards            synthetic JPEG shards (class-coloured noise), written once
  train_and_resume  the local launcher on one GPU, bf16, ZeRO-2: past a metrics log, a checkpoint and a
                    periodic evaluation, then a second launch resumes from the checkpoint
  train_throughput  train images/s: SNNet (a middle S->B stitch) vs the hand-written path (bench/lib)
                    vs DeiT-S alone, interleaved step by step
  eval_throughput   images/s of the one-pass evaluation of all 71 configs
  peak_memory       the most GPU memory any figure allocated

Prints one table, writes bench/out/gpu_check.json, ends with RESULT lines; exits non-zero when any
step fails. `--cpu-smoke` runs the same functions with tiny anchors, 32 px and a few steps on the
CPU (the test suite runs it, so the script cannot rot).

    scripts/gpu_check.sh                 # < 8 min on one H100/H200
    scripts/gpu_check.sh --cpu-smoke     # ~1-2 min on a laptop
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "lib"))
sys.path.insert(0, str(REPO / "bench"))  # gpu_busy.py: the compiled and GPU-decode figures

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
TINY = [  # equal depth, growing width: the same stitch space as DeiT-Ti/S/B at toy size
    ["deit_tiny_patch16_224", {"embed_dim": 24, "depth": 4, "num_heads": 2}],
    ["deit_small_patch16_224", {"embed_dim": 32, "depth": 4, "num_heads": 2}],
    ["deit_base_patch16_224", {"embed_dim": 48, "depth": 4, "num_heads": 2}],
]


@dataclass
class Check:
    """What one run of the check measures with, and where it writes."""

    device: torch.device
    work: Path
    smoke: bool
    classes: int = 10
    img_size: int = 224
    batch: int = 128
    train_images: int = 4096
    val_images: int = 1024
    steps: int = 40
    """Optimizer steps of the first launch; the resumed launch trains `steps // 2` more."""
    bench_steps: int = 20
    warmup: int = 5
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def anchors(self) -> list:
        return TINY if self.smoke else DEIT

    @property
    def timm_kwargs(self) -> dict[str, Any]:
        extra = {"img_size": self.img_size, "patch_size": 8} if self.smoke else {}
        return {"num_classes": self.classes, **extra}

    @property
    def precision(self) -> Any:
        """The trainer's one precision policy (bf16 weights on GPUs, fp32 on CPUs): what trains is measured."""
        from snnet_ray.precision import PrecisionPolicy

        return PrecisionPolicy.for_device(self.device)


# -- figures ---------------------------------------------------------------------------------------------
def shards(check: Check) -> dict[str, Any]:
    """Synthetic JPEG shards: each class a colour, each image that colour plus noise and a random box."""
    import numpy as np
    from PIL import Image

    from snnet_ray.data.shards import ImageRecord, write_shards

    root = check.work / "shards"
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(check.classes, 3))

    def records(n: int, split: str) -> list[ImageRecord]:
        out = []
        for i in range(n):
            label = i % check.classes
            pixels = rng.normal(colours[label], 40, size=(check.img_size, check.img_size, 3))
            y, x = rng.integers(0, check.img_size // 2, size=2)
            pixels[y : y + check.img_size // 4, x : x + check.img_size // 4] = 255 - colours[label]
            buf = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
            out.append(ImageRecord(key=f"{split}{i:06d}", label=label, source=f"synthetic/{i}", data=buf.getvalue()))
        return out

    start = time.perf_counter()
    summary = write_shards(
        {"train": records(check.train_images, "train"), "val": records(check.val_images, "val")},
        str(root),
        name="synthetic",
        class_names=[f"class{c}" for c in range(check.classes)],
        shard_size=max(check.val_images // 4, 16),
        progress=False,
    )
    return {
        "root": str(root),
        "images": summary.images,
        "shards": summary.shards,
        "seconds": time.perf_counter() - start,
    }


def train_and_resume(check: Check) -> dict[str, Any]:
    """Two launches of the local launcher: train past a log, a checkpoint and an evaluation; resume."""
    from snnet_ray.results import LocalResults
    from snnet_ray.train.checkpoint import read_train_state
    from snnet_ray.train.config import load_experiment
    from snnet_ray.train.local import run_local

    every = max(check.steps // 2, 1)
    base = [
        f"model.anchors={json.dumps(check.anchors)}",
        "model.pretrained=false",
        "loss.teacher=null",  # random-init anchors: no RegNetY-160 teacher file on a bare GPU box
        "loss.teacher_weights=null",
        "loss.distill_weight=0",
        f"model.timm_kwargs={json.dumps(check.timm_kwargs)}",
        f"model.ls_init_images={min(64, check.batch)}",
        f"data.root={check.work / 'shards'}",
        f"data.input_size={check.img_size}",
        f"data.batch_size={check.batch}",
        f"data.val_batch_size={check.batch}",
        f"data.num_workers={1 if check.smoke else 8}",
        "data.shuffle_buffer=256",
        "data.auto_augment=null",
        f"scaling.use_gpu={str(check.device.type == 'cuda').lower()}",
        "scaling.num_workers=1",
        "deepspeed.zero_stage=2",
        "optim.lr=5e-4",
        "schedule.lr_reference_batch=null",
        "schedule.warmup_epochs=0",
        f"deepspeed.micro_batch_size={check.batch}",
        "deepspeed.global_batch_size=null",
        f"run.storage_path={check.work / 'runs'}",
        f"run.log_every_steps={max(every // 2, 1)}",
        f"run.checkpoint_every_steps={every}",
        f"eval.every_steps={every}",
        "eval.configs=anchors",
        "eval.max_shards=1",
        "eval.final=false",
        f"results.url=sqlite:///{check.work / 'results.db'}",
        "run.name=gpu-check",
    ]
    shutil.rmtree(check.work / "runs" / "gpu-check", ignore_errors=True)
    start = time.perf_counter()
    first = run_local(load_experiment("deit_ti_s_b_imagenet", [*base, f"schedule.max_steps={check.steps}"]), 1)
    first_s = time.perf_counter() - start
    resume_steps = check.steps + max(check.steps // 2, 1)
    start = time.perf_counter()
    second = run_local(load_experiment("deit_ti_s_b_imagenet", [*base, f"schedule.max_steps={resume_steps}"]), 1)
    second_s = time.perf_counter() - start

    run_dir = check.work / "runs" / "gpu-check"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [m["step"] for m in metrics if "loss" in m]
    problems = []
    if first.checkpoint is None or not Path(first.checkpoint, "model", "snnet.json").is_file():
        problems.append("the first launch wrote no checkpoint with model/")
    if len(logged) != len(set(logged)) or not logged or max(logged) != resume_steps:
        problems.append(f"logged steps {logged}: a step was trained twice or the run stopped early")
    if not any(s <= check.steps for s in logged) or not any(s > check.steps for s in logged):
        problems.append("the resumed launch did not continue after the first launch's checkpoint")
    state = read_train_state(second.checkpoint)["states"]["progress"]
    if state["step"] != resume_steps or state["samples"] != resume_steps * check.batch:
        problems.append(f"progress after the resume is {state}, expected {resume_steps} steps")
    evaluated = LocalResults(check.work / "results.db").records("gpu-check", f"step-{every:06d}")
    if not evaluated:
        problems.append("the periodic evaluation recorded nothing")
    if problems:
        raise RuntimeError("; ".join(problems))
    return {
        "first_launch_s": first_s,
        "resumed_launch_s": second_s,
        "logged_steps": logged,
        "last_loss": metrics[-1].get("loss"),
        "train_images_per_s": [m["images_per_s"] for m in metrics if "images_per_s" in m][-1],
        "train_peak_gib": max((m.get("gpu_peak_gib", 0.0) for m in metrics), default=0.0),
        "checkpoint": second.checkpoint,
    }


def train_throughput(check: Check) -> dict[str, Any]:
    """Train images/s of the SNNet on a middle S->B stitch, the same path written by hand, and DeiT-S."""
    import timm
    from hand_written import HandWrittenPath

    from snnet_ray import SNNet

    torch.manual_seed(0)
    policy = check.precision
    model = policy.cast_model(SNNet.from_timm(check.anchors, **check.timm_kwargs), check.device).train()
    cfg_id = _middle_stitch(model, 1, 2)
    model.select(cfg_id)
    hand = HandWrittenPath(model, cfg_id).train()
    name, kwargs = (check.anchors[1], {}) if isinstance(check.anchors[1], str) else check.anchors[1]
    alone = policy.cast_model(timm.create_model(name, **kwargs, **check.timm_kwargs), check.device).train()
    x = policy.cast_input(torch.randn(check.batch, 3, check.img_size, check.img_size), check.device)
    y = torch.randint(0, check.classes, (check.batch,), device=check.device)
    steps = {name: _train_step(m, check) for name, m in (("snnet", model), ("hand", hand), ("deit_s", alone))}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(check.warmup + check.bench_steps):
        for k, step in steps.items():  # interleaved: noise hits every network alike
            times[k].append(step(x, y))
    ips = {k: check.batch / statistics.median(v[check.warmup :]) for k, v in times.items()}
    return {
        "config": model.configs[cfg_id].name,
        "snnet_images_per_s": ips["snnet"],
        "hand_images_per_s": ips["hand"],
        "deit_s_images_per_s": ips["deit_s"],
        "snnet_vs_hand": ips["snnet"] / ips["hand"],
    }


def eval_throughput(check: Check) -> dict[str, Any]:
    """Images/s of evaluating every config (71 for DeiT-Ti/S/B) in one pass per batch."""
    from snnet_ray import SNNet
    from snnet_ray.eval.one_pass import evaluate_batch

    torch.manual_seed(0)
    policy = check.precision
    model = policy.cast_model(SNNet.from_timm(check.anchors, **check.timm_kwargs), check.device).eval()
    x = policy.cast_input(torch.randn(check.batch * 2, 3, check.img_size, check.img_size), check.device)
    y = torch.randint(0, check.classes, (len(x),), device=check.device)
    seconds = []
    with torch.inference_mode():
        for _ in range(max(check.bench_steps // 4, 2) + 1):
            _sync(check.device)
            start = time.perf_counter()
            counts = evaluate_batch(model, x, y)
            _sync(check.device)
            seconds.append(time.perf_counter() - start)
    return {"configs": len(counts), "images_per_s": len(x) / statistics.median(seconds[1:])}


def peak_memory(check: Check) -> dict[str, Any]:
    """The most GPU memory any figure allocated: the benchmarks in this process, and the training
    launches (their own processes) as their rank 0 logged it (`gpu_peak_gib` in metrics.jsonl)."""
    if check.device.type != "cuda":
        return {"gib": 0.0}
    here = torch.cuda.max_memory_allocated(check.device) / 2**30
    metrics = check.work / "runs" / "gpu-check" / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    training = max((json.loads(line).get("gpu_peak_gib", 0.0) for line in lines), default=0.0)
    return {"gib": max(here, training), "this_process_gib": here, "training_gib": training}


def compiled_vs_eager(check: Check) -> dict[str, Any]:
    """SN-Net train images/s with every block compiled (`SNNet.compile_blocks`) vs eager, configs
    switching every step; compile time is the first pass over every config (bench/gpu_busy.py)."""
    from gpu_busy import train_images_per_s

    kw: dict[str, Any] = dict(device=str(check.device), batch=check.batch, steps=check.bench_steps)
    if check.smoke:  # inductor on 2 CPU cores takes minutes; eager dynamo applies the same guards
        kw.update(anchors=check.anchors, timm_kwargs=check.timm_kwargs, backend="eager")
    eager, compiled = train_images_per_s(False, **kw), train_images_per_s(True, **kw)
    return {
        "eager_images_per_s": eager["images_per_s"],
        "compiled_images_per_s": compiled["images_per_s"],
        "compile_first_pass_s": compiled["first_pass_s"],
        "speedup": compiled["images_per_s"] / eager["images_per_s"],
    }


def gpu_decode(check: Check) -> dict[str, Any]:
    """JPEG decode + random-resized-crop + flip: nvJPEG on the device vs PIL on one CPU core."""
    from gpu_busy import jpeg_images_per_s

    kw: dict[str, Any] = dict(device=str(check.device), batch=check.batch)
    if check.smoke:
        kw.update(images=16, size=32, reps=1)
    cpu, device = jpeg_images_per_s(False, **kw), jpeg_images_per_s(True, **kw)
    return {
        "cpu_core_images_per_s": cpu["images_per_s"],
        "device_images_per_s": device["images_per_s"],
        "speedup": device["images_per_s"] / cpu["images_per_s"],
    }


FIGURES: list[Callable[[Check], dict[str, Any]]] = [
    shards,
    train_and_resume,
    train_throughput,
    eval_throughput,
    compiled_vs_eager,
    gpu_decode,
    peak_memory,
]


# -- helpers ---------------------------------------------------------------------------------------------
def _middle_stitch(model: Any, front: int, back: int) -> int:
    target = (model.cost(front).gmacs + model.cost(back).gmacs) / 2
    stitches = [c for c in model.configs if c.anchors == (front, back)]
    return min(stitches, key=lambda c: abs(model.cost(c.id).gmacs - target)).id


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(module: nn.Module, check: Check) -> Callable[[torch.Tensor, torch.Tensor], float]:
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=check.device.type == "cuda")

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        _sync(check.device)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(module(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(check.device)
        return time.perf_counter() - start

    return step


def build_check(args: argparse.Namespace) -> Check:
    if args.cpu_smoke:
        return Check(
            device=torch.device("cpu"), work=args.work, smoke=True, img_size=32, batch=8,
            train_images=256, val_images=64, steps=4, bench_steps=3, warmup=1,
        )  # fmt: skip
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --cpu-smoke")
    return Check(device=torch.device("cuda", 0), work=args.work, smoke=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny anchors, 32 px, a few steps, on the CPU")
    parser.add_argument("--work", type=Path, default=Path("/tmp/snnet-gpu-check"), help="shards, runs, database")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu_check.json")
    args = parser.parse_args(argv)
    check = build_check(args)
    check.work.mkdir(parents=True, exist_ok=True)
    failed = []
    start = time.perf_counter()
    for figure in FIGURES:
        t0 = time.perf_counter()
        try:
            check.results[figure.__name__] = {**figure(check), "seconds": time.perf_counter() - t0}
            status = "ok"
        except Exception as err:  # report every figure, then fail
            traceback.print_exc()
            check.results[figure.__name__] = {"error": f"{type(err).__name__}: {err}"}
            failed.append(figure.__name__)
            status = "FAILED"
        print(f"{figure.__name__:<18} {status:<7} {time.perf_counter() - t0:7.1f} s", flush=True)
    total = time.perf_counter() - start
    r = check.results
    device = torch.cuda.get_device_name(check.device) if check.device.type == "cuda" else "cpu"
    family = "smoke (tiny anchors)" if check.smoke else "DeiT-Ti/S/B"
    print(f"\n{device}, {family}, batch {check.batch}, {check.img_size}px")
    print(f"{'figure':<34} {'value':>10}")
    ev = r.get("eval_throughput", {})
    rows = [
        ("SNNet train images/s", r.get("train_throughput", {}).get("snnet_images_per_s")),
        ("hand-written path train images/s", r.get("train_throughput", {}).get("hand_images_per_s")),
        ("DeiT-S alone train images/s", r.get("train_throughput", {}).get("deit_s_images_per_s")),
        ("launcher train images/s", r.get("train_and_resume", {}).get("train_images_per_s")),
        (f"eval images/s ({ev.get('configs')} configs)", ev.get("images_per_s")),
        ("train images/s, eager", r.get("compiled_vs_eager", {}).get("eager_images_per_s")),
        ("train images/s, compiled blocks", r.get("compiled_vs_eager", {}).get("compiled_images_per_s")),
        ("compile (first pass) seconds", r.get("compiled_vs_eager", {}).get("compile_first_pass_s")),
        ("JPEG decode images/s, 1 CPU core", r.get("gpu_decode", {}).get("cpu_core_images_per_s")),
        ("JPEG decode images/s, device", r.get("gpu_decode", {}).get("device_images_per_s")),
        ("peak memory GiB", r.get("peak_memory", {}).get("gib")),
        ("total seconds", total),
    ]  # fmt: skip
    for name, value in rows:
        print(f"{name:<34} {'-' if value is None else f'{value:.1f}':>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"device": device, "smoke": check.smoke, "failed": failed, "total_s": total, **r}, indent=1, default=str
        )
    )
    tt = r.get("train_throughput", {})
    if "snnet_vs_hand" in tt:
        floor = 0.95 * tt["hand_images_per_s"]
        print(f"RESULT snnet_train_images_per_s {tt['snnet_images_per_s']:.1f} target >= {floor:.1f}")
        print(f"RESULT deit_s_train_images_per_s {tt['deit_s_images_per_s']:.1f} target > 0")
    if "images_per_s" in r.get("eval_throughput", {}):
        print(f"RESULT eval_all_configs_images_per_s {r['eval_throughput']['images_per_s']:.1f} target > 0")
    if "gib" in r.get("peak_memory", {}):
        print(f"RESULT peak_memory_gib {r['peak_memory']['gib']:.2f} target <= 139")
    if "speedup" in r.get("compiled_vs_eager", {}):
        print(f"RESULT compiled_vs_eager_train_speedup {r['compiled_vs_eager']['speedup']:.2f} target >= 1.0")
    if "speedup" in r.get("gpu_decode", {}):
        print(f"RESULT gpu_decode_vs_cpu_core {r['gpu_decode']['speedup']:.2f} target > 1")
    print(f"RESULT gpu_check_seconds {total:.0f} target <= 480")
    ratio = tt.get("snnet_vs_hand")
    print(f"RESULT snnet_vs_hand_train_speed {ratio if ratio is None else f'{ratio:.3f}'} target >= 0.95")
    if failed:
        print(f"gpu check FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
