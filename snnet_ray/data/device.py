"""Finishing training batches on the device: uint8 in, normalised, erased and mixed out.

The loader's workers decode, crop, flip and RandAugment (per-image PIL work), and hand over
uint8 NCHW batches - a quarter of float32's bytes - from pinned memory. Everything that is
arithmetic over whole tensors runs where the model runs (timm's `PrefetchLoader` pattern):

    finish = DeviceFinisher(data_cfg, num_classes, device, dtype=torch.bfloat16)
    for images, labels in loader:                 # uint8 (B, 3, H, W), int64 (B,)
        x, targets = finish(images, labels)       # normalised, random-erased, mixup/cutmix, on device

Nothing here waits for the device: copies are non-blocking and every random decision is drawn on
the host (Python's and numpy's generators, seeded per worker as before).

`decode_jpeg_batch` decodes encoded JPEG bytes with nvJPEG (`torchvision.io.decode_jpeg(device=
"cuda")`) when `data.decode_on_device` is on; the loader then ships bytes instead of pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import DataConfig
from .transforms import build_mixup

__all__ = ["DeviceFinisher", "decode_jpeg_batch", "resized_crop_batch"]


class DeviceFinisher:
    """uint8 NCHW batch -> float batch on `device` in `dtype`: normalise, random erasing, mixup/cutmix.

    The same order as the CPU pipeline it replaces (normalise, erase per image, mix per batch), so
    a run's augmentation statistics do not change. Targets become soft (B, num_classes) when
    mixup/cutmix is on, else stay class indices.
    """

    def __init__(
        self, cfg: DataConfig, num_classes: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> None:
        from timm.data.random_erasing import RandomErasing

        self.device, self.dtype = torch.device(device), dtype
        self.mean = torch.tensor([255 * m for m in cfg.mean], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * s for s in cfg.std], device=self.device).view(1, 3, 1, 1)
        self.erase = (
            RandomErasing(cfg.re_prob, mode=cfg.re_mode, max_count=cfg.re_count, device=self.device)
            if cfg.re_prob > 0
            else None
        )
        self.mixup = build_mixup(cfg, num_classes)
        self.cfg = cfg

    def __call__(
        self, images: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor):  # JPEG bytes (data.decode_on_device)
            cfg = self.cfg
            decoded = decode_jpeg_batch(images, self.device)
            images = resized_crop_batch(decoded, cfg.input_size, cfg.scale, cfg.ratio, cfg.hflip)
        if images.dtype != torch.uint8:
            raise TypeError(
                f"DeviceFinisher takes uint8 batches (data.finish_on_device), got {images.dtype}; "
                "build the loader with finish_on_device=true or do not finish on the device"
            )
        x = images.to(self.device, non_blocking=True).float()
        targets = labels.to(self.device, non_blocking=True)
        x.sub_(self.mean).div_(self.std)
        if self.erase is not None:
            x = self.erase(x)
        if self.mixup is not None:
            x, targets = self.mixup(x, targets)
        return x.to(self.dtype), targets


def decode_jpeg_batch(encoded: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Decode JPEG bytes (1-D uint8 tensors) to RGB uint8 CHW tensors on `device` (nvJPEG on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if device.type == "cuda":
        return decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device)
    return [decode_jpeg(e, mode=ImageReadMode.RGB) for e in encoded]


def resized_crop_batch(
    images: Sequence[torch.Tensor],
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip of decoded images (any device) into one uint8 batch.

    Crop boxes and flips are drawn on the host (torchvision's own sampler), so nothing waits
    for the device. RandAugment stays a CPU-pipeline feature: with device decoding it is skipped.
    """
    import random

    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import functional as F

    out = []
    for img in images:
        top, left, h, w = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        crop = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        out.append(F.horizontal_flip(crop) if random.random() < hflip else crop)
    return torch.stack(out)
