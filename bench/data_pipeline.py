"""Data pipeline throughput: the CPU part before/after finishing moves to the device, the webdataset
train pipeline against decode+augment alone, and shard writing.

Before: the workers normalise to float32, random-erase and mix (mixup/cutmix) every batch. After
(`data.finish_on_device`, the default): the workers stop at uint8 NCHW crops and the device does
the rest (`snnet_ray.data.device.DeviceFinisher`), so the CPU part's images/s per core rise:
`RESULT cpu_pipeline_speedup` (target >= 1.5), both on one core, interleaved rounds.

The train pipeline (tar reading, shard resampling, shuffle buffer, decode, timm augmentation,
batching, mixup/cutmix, the DataLoader) should cost little beyond the decoding and augmentation
it wraps: target >= 0.9x the images/s of a bare loop over the same images held in memory that
produces the same batches (decode, per-image timm transform, stack, timm Mixup), both on one core
(num_workers=0, one torch thread), measured in interleaved rounds. Images are generated
photo-like JPEGs of ImageNet-like size (256-500 px a side, quality 90) in a temporary
ImageFolder tree, written to shards by our writer, whose images/s are reported too.

    python bench/data_pipeline.py [--images 2000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from snnet_ray.data import (
    DataConfig,
    build_mixup,
    build_train_loader,
    build_train_transform,
    write_imagefolder_shards,
)
from snnet_ray.data.images import decode_image

OUT = Path(__file__).parent / "out" / "data_pipeline.json"
BATCH = 64
CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="processes for the multi-core rows")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        src = Path(tmp) / "src"
        t0 = time.perf_counter()
        sizes = make_jpegs(src, args.images)
        gen_s = time.perf_counter() - t0
        one = write_imagefolder_shards(str(src), f"{tmp}/w1", shard_size=250, workers=1, progress=False)
        cold = write_imagefolder_shards(str(src), f"{tmp}/wc", shard_size=250, workers=args.workers, progress=False)
        # the writer's process server now runs: a second write starts its workers in milliseconds
        many = write_imagefolder_shards(str(src), f"{tmp}/wn", shard_size=250, workers=args.workers, progress=False)
        # The buffer holds a tenth of a worker's epoch, as the default 2000 does for ImageNet on
        # 8 ranks x 8 workers; a buffer as large as the epoch would mostly measure its filling.
        buffer = max(BATCH, args.images // 10)
        cfg = DataConfig(
            f"{tmp}/w1",
            batch_size=BATCH,
            num_workers=0,
            samples_per_epoch=args.images,
            shuffle_buffer=buffer,
            shuffle_initial=buffer // 4,
        )
        blobs = [p.read_bytes() for p in sorted(src.rglob("*.JPEG"))]

        before_cfg = cfg.replace(finish_on_device=False)  # normalise, erase, mix in the workers
        decode_augment(before_cfg, blobs[:BATCH])  # warm up imports and caches, untimed
        pipeline(before_cfg, 1)
        pipeline(cfg, 1)
        bare, piped, after = [], [], []
        for _ in range(args.rounds):  # interleaved: A, B, C, A, B, C, ...
            bare.append(decode_augment(before_cfg, blobs))
            piped.append(pipeline(before_cfg))
            after.append(pipeline(cfg))
        multi = pipeline(cfg.replace(num_workers=args.workers))
        # data.decode_on_device: the workers only read, shuffle and batch JPEG bytes (nvJPEG decodes;
        # RandAugment is skipped in that mode, so this row is not the like-for-like figure)
        encoded = pipeline(cfg.replace(decode_on_device=True))

    bare_rate = sum(n for n, _ in bare) / sum(s for _, s in bare)
    piped_rate = sum(n for n, _ in piped) / sum(s for _, s in piped)
    after_rate = sum(n for n, _ in after) / sum(s for _, s in after)
    multi_rate = multi[0] / multi[1]
    ratio = piped_rate / bare_rate
    speedup = after_rate / piped_rate
    rows = [
        ("decode+augment alone (float, mixed), 1 core", bare_rate, bare_rate),
        ("train pipeline, CPU finishing (before), 1 core", piped_rate, piped_rate),
        ("train pipeline, uint8 out, device finishing (after), 1 core", after_rate, after_rate),
        (f"train pipeline (after), num_workers={args.workers}", multi_rate, multi_rate / args.workers),
        ("train pipeline, JPEG bytes out (decode_on_device), 1 core", *(2 * [encoded[0] / encoded[1]])),
        ("shard writing, 1 process", one.images_per_s, one.images_per_s),
        (f"shard writing, {args.workers} processes, first run", cold.images_per_s, cold.images_per_s / args.workers),
        (f"shard writing, {args.workers} processes, next runs", many.images_per_s, many.images_per_s / args.workers),
    ]
    print(
        f"{args.images} JPEGs, mean {np.mean([w for w, _ in sizes]):.0f}x{np.mean([h for _, h in sizes]):.0f} px, "
        f"{sum(len(b) for b in blobs) / len(blobs) / 1e3:.0f} kB; {cfg.input_size} px crops, "
        f"{cfg.auto_augment}, re_prob {cfg.re_prob}, mixup {cfg.mixup_alpha}/cutmix {cfg.cutmix_alpha}, "
        f"batch {BATCH}, shuffle buffer {cfg.shuffle_buffer}; {args.rounds} interleaved rounds; "
        f"{os.cpu_count()} CPUs seen"
    )
    print(f"{'what':<62}{'images/s':>10}{'per core':>10}")
    for name, rate, per_core in rows:
        print(f"{name:<62}{rate:>10.1f}{per_core:>10.1f}")
    print(f"{'train pipeline / decode+augment (per core; target >= 0.9)':<62}{ratio:>10.3f}")
    print(f"{'CPU part after / before (per core; target >= 1.5)':<62}{speedup:>10.3f}")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "images": args.images,
                "rounds": args.rounds,
                "workers": args.workers,
                "generate_s": gen_s,
                "decode_augment_images_per_s": bare_rate,
                "pipeline_images_per_s": piped_rate,
                "pipeline_uint8_images_per_s": after_rate,
                "cpu_pipeline_speedup": speedup,
                "pipeline_uint8_per_round": [n / s for n, s in after],
                "pipeline_per_round": [n / s for n, s in piped],
                "decode_augment_per_round": [n / s for n, s in bare],
                "pipeline_multi_worker_images_per_s": multi_rate,
                "ratio": ratio,
                "write_1_images_per_s": one.images_per_s,
                "write_n_images_per_s": many.images_per_s,
                "write_n_first_images_per_s": cold.images_per_s,
                "shard_bytes": one.bytes,
            },
            indent=1,
        )
    )
    print(f"RESULT cpu_pipeline_speedup {speedup:.2f} target >= 1.5")


def decode_augment(cfg: DataConfig, blobs: list[bytes]) -> tuple[int, float]:
    """The bare loop over in-memory bytes, producing what the pipeline produces: decode, per-image
    transform, stack into batches, mixup/cutmix with soft targets."""
    transform, mixup = build_train_transform(cfg), build_mixup(cfg, CLASSES)
    start = time.perf_counter()
    for i in range(0, len(blobs) - BATCH + 1, BATCH):
        images = torch.stack([transform(decode_image(data)) for data in blobs[i : i + BATCH]])
        mixup(images, torch.arange(BATCH) % CLASSES)
    return len(blobs) // BATCH * BATCH, time.perf_counter() - start


def pipeline(cfg: DataConfig, max_batches: int | None = None) -> tuple[int, float]:
    """One epoch of the train loader (or its first batches)."""
    loader = build_train_loader(cfg, rank=0, world_size=1)
    start, n = time.perf_counter(), 0
    for i, (images, _) in enumerate(loader):
        n += len(images)
        if max_batches is not None and i + 1 >= max_batches:
            break
    return n, time.perf_counter() - start


def make_jpegs(root: Path, count: int) -> list[tuple[int, int]]:
    """Photo-like JPEGs: smooth random colour fields with fine noise, 256-500 px a side."""
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(256, 501, size=2))
        base = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = root / "train" / f"c{i % CLASSES}" / f"img{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, format="JPEG", quality=90)
        sizes.append((w, h))
    return sizes


if __name__ == "__main__":
    main()
