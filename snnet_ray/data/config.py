"""`DataConfig`: where the shards are and how train and validation batches are made.

Defaults follow the DeiT recipe SN-Net trains with (RandomResizedCrop, RandAugment
`rand-m9-mstd0.5-inc1`, random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1).
Normalisation, interpolation and crop must match the anchors: build the config with
`DataConfig.from_timm(root, timm.data.resolve_data_config({}, model=anchor))`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DataConfig"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "random")


@dataclass(frozen=True)
class DataConfig:
    """Shards, batches, augmentation and mixup for the train and validation pipelines."""

    root: str
    """Shards root holding `_info.json`: a local directory, `s3://`/`gs://`/... URL, or `pipe:` prefix."""
    input_size: int = 224
    """Square side of the images the model sees."""
    batch_size: int = 128
    """Images per batch on each rank (worker of the data-parallel group)."""
    val_batch_size: int | None = None
    """Validation batch size; defaults to `batch_size`."""
    num_workers: int | None = None
    """DataLoader worker processes per rank (0 decodes in the training process); None: 4, or in a
    training run one per CPU of `scaling.cpus_per_worker` but the one the training process uses."""
    shuffle_buffer: int = 2000
    """Samples held by each DataLoader worker's shuffle buffer (as encoded bytes: ImageNet's ~110 kB
    each make 2000 about 220 MB per worker)."""
    shuffle_initial: int = 500
    """Samples buffered before the first one leaves (a smaller start is less random but faster)."""
    samples_per_epoch: int | None = None
    """Training samples per epoch over all ranks; defaults to the train split's size."""
    train_split: str = "train"
    val_split: str = "validation"
    """The validation split; `val` names it too (older shards, see data/splits.py)."""
    # normalisation and resizing: take them from the anchors' timm data config
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # augmentation (timm `create_transform`)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.4
    """Used only when `auto_augment` is None."""
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    """timm RandAugment / AutoAugment string; None for none."""
    three_augment: bool = False
    """DeiT III's 3-Augment (SN-Netv2's recipe) in place of RandAugment: one of grayscale,
    solarisation and Gaussian blur per image, then `color_jitter`. `auto_augment` must be None."""
    simple_random_crop: bool = False
    """With `three_augment`: DeiT III's simple random crop (resize the short side to `input_size`,
    reflect-pad 4, random crop) instead of RandomResizedCrop."""
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    # mixup / cutmix (timm `Mixup`): targets become soft when either alpha is > 0
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    label_smoothing: float = 0.1
    repeated_aug: int = 1
    """Repeated augmentation (DeiT's recipe: 3): each training image is read once and used this many
    times, augmented independently; an epoch keeps its length, so it sees 1/repeats distinct images."""
    seed: int = 0
    """Shard order, shuffle buffers and augmentation all derive from it (with epoch, rank and worker)."""
    pin_memory: bool = True
    """Page-locked batches, so the copy to the GPU is asynchronous (ignored without a GPU)."""
    finish_on_device: bool = True
    """Train batches leave the loader as uint8 NCHW; normalisation, random erasing and mixup/cutmix
    run on the device (`snnet_ray.data.device.DeviceFinisher`). False: all of it in the workers."""
    decode_on_device: bool = False
    """Ship JPEG bytes and decode them on the GPU (nvJPEG), with random-resized-crop and flip there
    too (RandAugment is then skipped). Needs finish_on_device."""
    prefetch_factor: int = 2
    """Batches each DataLoader worker prepares ahead."""

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"DataConfig: {msg}")

        need(bool(self.root), "root is empty; set it to the shards directory or URL")
        need(self.input_size > 0, f"input_size must be > 0, got {self.input_size}")
        need(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        need(self.val_batch_size is None or self.val_batch_size > 0, "val_batch_size must be > 0")
        need(self.num_workers is None or self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(
            self.finish_on_device or not self.decode_on_device,
            "decode_on_device needs finish_on_device=true (decoded images are finished where they are)",
        )
        need(
            not (self.three_augment and self.auto_augment),
            f"three_augment replaces RandAugment; set auto_augment=null (got {self.auto_augment!r})",
        )
        need(
            not (self.three_augment and self.decode_on_device),
            "three_augment runs in the loader workers, which decode_on_device bypasses; set one of them false",
        )
        need(self.three_augment or not self.simple_random_crop, "simple_random_crop is part of three_augment; set both")
        need(0 <= self.color_jitter <= 1, f"color_jitter must be in [0, 1], got {self.color_jitter}")
        need(self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        need(self.shuffle_initial >= 1, f"shuffle_initial must be >= 1, got {self.shuffle_initial}")
        need(self.samples_per_epoch is None or self.samples_per_epoch > 0, "samples_per_epoch must be > 0")
        need(len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values (RGB)")
        need(self.interpolation in _INTERPOLATIONS, f"interpolation must be one of {_INTERPOLATIONS}")
        need(0 < self.crop_pct <= 1, f"crop_pct must be in (0, 1], got {self.crop_pct}")
        need(0 <= self.re_prob <= 1, f"re_prob must be in [0, 1], got {self.re_prob}")
        need(self.mixup_alpha >= 0 and self.cutmix_alpha >= 0, "mixup_alpha and cutmix_alpha must be >= 0")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.mixup_mode in ("batch", "pair", "elem"), "mixup_mode must be batch, pair or elem")
        need(1 <= self.repeated_aug <= 16, f"repeated_aug must be in 1..16 (1: off), got {self.repeated_aug}")
        need(
            not self.mixes or self.batch_size % 2 == 0,
            f"mixup/cutmix pair each image with another, so batch_size must be even (got {self.batch_size})",
        )

    @property
    def mixes(self) -> bool:
        """Whether mixup or cutmix is on (and targets are soft)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def workers(self) -> int:
        """DataLoader worker processes per rank (`num_workers`, 4 when unset)."""
        return 4 if self.num_workers is None else self.num_workers

    @property
    def eval_batch_size(self) -> int:
        return self.val_batch_size or self.batch_size

    @classmethod
    def from_timm(cls, root: str, timm_config: Mapping[str, Any], **overrides: Any) -> DataConfig:
        """A config whose size, normalisation, interpolation and crop come from a timm data config.

        `timm_config` is what `timm.data.resolve_data_config({}, model=model)` returns.
        """
        keys = {"input_size", "mean", "std", "interpolation", "crop_pct"}
        from_model: dict[str, Any] = {k: timm_config[k] for k in keys if k in timm_config}
        if "input_size" in from_model:
            size = from_model["input_size"]
            from_model["input_size"] = int(size[-1] if isinstance(size, (tuple, list)) else size)
        for k in ("mean", "std"):
            if k in from_model:
                from_model[k] = tuple(float(v) for v in from_model[k])
        return cls(root=root, **{**from_model, **overrides})

    def replace(self, **changes: Any) -> DataConfig:
        """A copy with `changes` applied (and checked)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"DataConfig has no field(s) {unknown}")
        return replace(self, **changes)
