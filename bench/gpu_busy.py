"""Is the GPU kept busy? Compiled vs eager SN-Net train images/s, GPU JPEG decoding on vs off.

Functions for `scripts/gpu_check.sh` (no Ray): each measures one figure on the device and returns
a dict; `main` runs them all, prints one table, writes bench/out/gpu_busy.json and ends with
`RESULT compiled_vs_eager_train_speedup`.

- `train_images_per_s(compile=...)`: a training step of the SN-Net as the trainer runs it
  (precision policy: bf16 weights on GPUs; fused AdamW; uint8 batches finished on the device by
  `DeviceFinisher`; configs switched every step by the uniform sampler), eager vs regional compile
  (`SNNet.compile_blocks`). Compile time is reported apart (the first pass over the configs).
- `jpeg_images_per_s(on_device=...)`: the loader's decode + random-resized-crop + flip of JPEG
  bytes, on the CPU (PIL, one core) vs nvJPEG on the GPU (`torchvision.io.decode_jpeg(device=
  "cuda")` + crops on the GPU, `data.decode_on_device`).

    python bench/gpu_busy.py                 # on a GPU: DeiT-Ti/S/B, 224 px, batch 128
    python bench/gpu_busy.py --cpu-smoke     # tiny versions on the CPU (seconds): checks the code runs
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
TINY = (
    [
        ("deit_tiny_patch16_224", dict(embed_dim=32, depth=4, num_heads=2)),
        ("deit_small_patch16_224", dict(embed_dim=48, depth=4, num_heads=2)),
        ("deit_base_patch16_224", dict(embed_dim=64, depth=4, num_heads=2)),
    ],
    dict(img_size=32, patch_size=8, num_classes=10),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_images_per_s(
    compile: bool,
    device: str = "cuda",
    batch: int = 128,
    steps: int = 30,
    anchors: Any = None,
    timm_kwargs: dict | None = None,
    backend: str = "inductor",
) -> dict[str, float]:
    """Train images/s over `steps` steps after one warm-up pass over every config."""
    from snnet_ray import SNNet
    from snnet_ray.data import DataConfig
    from snnet_ray.data.device import DeviceFinisher
    from snnet_ray.precision import PrecisionPolicy
    from snnet_ray.train.samplers import build_sampler

    dev = torch.device(device)
    policy = PrecisionPolicy.for_device(dev)
    torch.manual_seed(0)
    model = SNNet.from_timm(anchors or DEIT, **(timm_kwargs or {}))
    model = policy.cast_model(model, dev).train()
    size = model.input_size[-1]
    finish = DeviceFinisher(DataConfig("unused", input_size=size, batch_size=batch), model.num_classes, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    sampler = build_sampler("uniform", [model.cost(c.id).gmacs for c in model.configs], world_size=1, rank=0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, model.num_classes, (batch,))
    if dev.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()

    def step(cfg_id: int) -> None:
        x, y = finish(images, labels)
        model.select(cfg_id)
        loss = torch.nn.functional.cross_entropy(model(policy.cast_input(x)).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    if compile:
        model.compile_blocks(backend=backend)
    for c in model.configs:  # first pass: compiles every block graph (once), warms the allocator
        step(c.id)
    _sync(dev)
    first_pass_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        step(sampler.sample(i))
    _sync(dev)
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * batch / seconds, "first_pass_s": first_pass_s, "precision": policy.describe()}


def make_jpegs(count: int, size: tuple[int, int] = (375, 500)) -> list[bytes]:
    """Photo-like JPEG bytes (smooth colour fields with noise), ImageNet-like size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        h, w = size
        base = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def jpeg_images_per_s(on_device: bool, device: str = "cuda", images: int = 512, batch: int = 128,
                      size: int = 224, reps: int = 3) -> dict[str, float]:
    """Decode + random-resized-crop + flip of JPEG bytes into uint8 batches: CPU (PIL) or the device."""
    from snnet_ray.data.device import decode_jpeg_batch, resized_crop_batch
    from snnet_ray.data.images import decode_image

    blobs = make_jpegs(images)
    dev = torch.device(device)
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    if on_device:
        def run(chunk: list[torch.Tensor]) -> torch.Tensor:
            return resized_crop_batch(decode_jpeg_batch(chunk, dev), size)
    else:
        from torchvision.transforms.functional import pil_to_tensor

        def run(chunk: list[torch.Tensor]) -> torch.Tensor:
            pil = [pil_to_tensor(decode_image(bytes(e.numpy()))) for e in chunk]
            return resized_crop_batch(pil, size)

    run(encoded[:batch])  # warm-up (nvJPEG handles, kernels)
    _sync(dev)
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for i in range(0, len(encoded), batch):
            run(encoded[i : i + batch])
        _sync(dev)
        rates.append(len(encoded) / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny versions on the CPU")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "gpu_busy.json")
    args = parser.parse_args()
    if args.cpu_smoke:
        device, kw = "cpu", dict(batch=8, steps=3, anchors=TINY[0], timm_kwargs=TINY[1], backend="eager")
        jpeg_kw = dict(device="cpu", images=16, batch=8, size=32, reps=1)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --cpu-smoke, or on a GPU machine")
        device, kw = "cuda", dict(batch=args.batch, steps=args.steps)
        jpeg_kw = dict(device="cuda", batch=args.batch)
    rows = {
        "train eager": train_images_per_s(False, device, **kw),
        "train compiled blocks": train_images_per_s(True, device, **kw),
        "jpeg decode+crop, CPU (1 core)": jpeg_images_per_s(False, **jpeg_kw),
        "jpeg decode+crop, device": jpeg_images_per_s(True, **jpeg_kw),
    }
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    family = "tiny DeiT family" if args.cpu_smoke else "DeiT-Ti/S/B 224 px"
    print(f"{name}: {family}, {rows['train eager']['precision']}")
    print(f"{'what':<34}{'images/s':>10}{'first pass s':>14}")
    for what, r in rows.items():
        first = f"{r['first_pass_s']:.1f}" if "first_pass_s" in r else ""
        print(f"{what:<34}{r['images_per_s']:>10.0f}{first:>14}")
    speedup = rows["train compiled blocks"]["images_per_s"] / rows["train eager"]["images_per_s"]
    decode = rows["jpeg decode+crop, device"]["images_per_s"] / rows["jpeg decode+crop, CPU (1 core)"]["images_per_s"]
    print(f"{'compiled / eager':<34}{speedup:>10.2f}\n{'device decode / CPU core':<34}{decode:>10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": name, "rows": rows, "compiled_vs_eager": speedup,
                                    "device_decode_vs_cpu_core": decode}, indent=1))
    print(f"RESULT compiled_vs_eager_train_speedup {speedup:.2f} target >= 1.0")


if __name__ == "__main__":
    main()
