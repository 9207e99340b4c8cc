"""Image transforms and mixup for the pipelines, built with timm from a `DataConfig`.

Train: RandomResizedCrop, horizontal flip, RandAugment (or colour jitter), to tensor, normalise,
random erasing - timm's `create_transform(is_training=True)`, the DeiT recipe. Or DeiT III's
3-Augment (`data.three_augment`, SN-Netv2's recipe): crop and flip, then one of grayscale,
solarisation and Gaussian blur, then colour jitter; with `data.simple_random_crop` the crop is
DeiT III's simple random crop (resize, reflect-pad 4, random crop) instead of RandomResizedCrop. Validation:
resize to `input_size / crop_pct`, centre crop, normalise. Mixup/cutmix: timm's `Mixup` on whole
batches, which also turns labels into (label-smoothed) soft targets.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import DataConfig

__all__ = ["build_mixup", "build_three_augment", "build_train_transform", "build_val_transform"]


def build_train_transform(cfg: DataConfig) -> Callable:
    """PIL RGB image -> augmented tensor (3, input_size, input_size): uint8 when the batch is finished
    on the device (`cfg.finish_on_device`: normalisation and random erasing happen there), else
    normalised, random-erased float."""
    from timm.data import create_transform

    if cfg.three_augment:
        return build_three_augment(cfg)

    transform = create_transform(
        input_size=cfg.input_size,
        is_training=True,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment,
        interpolation=cfg.interpolation,
        mean=cfg.mean,
        std=cfg.std,
        re_prob=cfg.re_prob,
        re_mode=cfg.re_mode,
        re_count=cfg.re_count,
        use_prefetcher=cfg.finish_on_device,  # timm: stop at uint8, the rest is the device's
    )
    _allow_zero_bit_posterize(transform)
    return transform


def build_three_augment(cfg: DataConfig) -> Callable:
    """DeiT III's 3-Augment (Touvron et al., "DeiT III: Revenge of the ViT", 2022), as SN-Netv2 trains.

    Crop (RandomResizedCrop, or the simple random crop) and horizontal flip; exactly one of
    grayscale, solarisation (threshold 128) and Gaussian blur (radius U(0.1, 2)); colour jitter
    (`color_jitter` for brightness, contrast and saturation) when > 0. Ends as `build_train_transform`
    does: uint8 for the device to finish, else normalised (and random-erased when `re_prob` > 0).
    Randomness comes from Python's and torch's generators, which the loader workers seed per rank
    and epoch."""
    from timm.data.transforms import MaybePILToTensor, RandomResizedCropAndInterpolation, str_to_interp_mode
    from torchvision import transforms as T

    size = cfg.input_size
    interpolation = "bicubic" if cfg.interpolation == "random" else cfg.interpolation
    if cfg.simple_random_crop:
        crop = [
            T.Resize(size, interpolation=str_to_interp_mode(interpolation)),
            T.RandomCrop(size, padding=4, padding_mode="reflect"),
        ]
    else:
        crop = [RandomResizedCropAndInterpolation(size, scale=cfg.scale, ratio=cfg.ratio, interpolation=interpolation)]
    steps: list[Callable] = [*crop, T.RandomHorizontalFlip(cfg.hflip)]
    steps.append(T.RandomChoice([T.Grayscale(num_output_channels=3), _Solarize(), _GaussianBlur(0.1, 2.0)]))
    if cfg.color_jitter > 0:
        steps.append(T.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
    if cfg.finish_on_device:
        steps.append(MaybePILToTensor())
    else:
        steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
        if cfg.re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            steps.append(RandomErasing(cfg.re_prob, mode=cfg.re_mode, max_count=cfg.re_count, device="cpu"))
    return T.Compose(steps)


class _Solarize:
    """Invert every pixel value at or above 128 (PIL's default threshold, as DeiT III)."""

    def __call__(self, img):
        from PIL import ImageOps

        return ImageOps.solarize(img)

    def __repr__(self) -> str:
        return "Solarize(threshold=128)"


class _GaussianBlur:
    """Gaussian blur with a radius drawn uniformly from [low, high] pixels."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def __call__(self, img):
        import torch
        from PIL import ImageFilter

        radius = self.low + (self.high - self.low) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"GaussianBlur(radius=U({self.low}, {self.high}))"


def build_val_transform(cfg: DataConfig) -> Callable:
    """PIL RGB image -> normalised, centre-cropped float tensor (3, input_size, input_size)."""
    from timm.data import create_transform

    # 'random' interpolation is a training-time choice; validation resizes with bicubic.
    interpolation = "bicubic" if cfg.interpolation == "random" else cfg.interpolation
    return create_transform(
        input_size=cfg.input_size,
        is_training=False,
        interpolation=interpolation,
        mean=cfg.mean,
        std=cfg.std,
        crop_pct=cfg.crop_pct,
    )


def build_mixup(cfg: DataConfig, num_classes: int) -> Callable | None:
    """timm `Mixup` (images, labels) -> (mixed images, soft targets), or None when it is off."""
    if not cfg.mixes:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )


def _allow_zero_bit_posterize(transform: Callable) -> None:
    """Make timm's posterize ops accept 0 bits again.

    timm's RandAugment `inc1` maps magnitude 10 (reached by m9 with mstd noise) to posterize with
    0 bits kept, and its `v0` AutoAugment policy asks for 0 bits too; Pillow < 13 returned a black
    image, Pillow 13 raises ValueError and would stop training. Keep the black image.
    """
    for t in getattr(transform, "transforms", ()):
        ops = list(getattr(t, "ops", ()))
        for sub_policy in getattr(t, "policy", ()):
            ops += list(sub_policy)
        for op in ops:
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = _posterize


def _posterize(img, bits_to_keep: int, **_):
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit cleared
    return ImageOps.posterize(img, bits_to_keep)
