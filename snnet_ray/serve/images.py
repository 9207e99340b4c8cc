"""Decoding request images safely: JPEG and PNG only, bounded in bytes, pixels and count.

Every byte of a request is hostile. Pillow reads only the header on `Image.open`; the pixel count is
checked against `max_pixels` before any pixel is decoded (a 50 kB PNG can claim 60 000 x 60 000),
Pillow's own decompression-bomb guard is an error rather than a warning, and truncated files are
refused rather than padded. A decoded image becomes the model's input with the validation transform
the model was trained with: resize and centre crop here, to uint8; normalisation on the device.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ALLOWED_FORMATS", "ImageError", "Normalization", "build_transform", "decode_image"]

ALLOWED_FORMATS = ("JPEG", "PNG")


class ImageError(ValueError):
    """An image the service will not decode; the message says which and why. `too_large` marks
    images over a size limit (HTTP 413) as against undecodable ones (400)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, what: str = "image") -> Any:
    """JPEG/PNG bytes -> RGB PIL image, or ImageError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{what} is empty")
    if len(data) > max_bytes:
        raise ImageError(f"{what} is {len(data)} bytes; the limit is {max_bytes}", too_large=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = img.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise ImageError(f"{what} is {width}x{height} pixels; the limit is {max_pixels} pixels", too_large=True)
            img.load()  # decodes now, inside the guards; a truncated file raises here
            return img.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a JPEG or PNG image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{what} is too large to decode: {err}", too_large=True) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{what} could not be decoded ({err.__class__.__name__}: {err})") from None


def build_transform(data: Mapping[str, Any], input_size: tuple[int, int, int]) -> tuple[Callable, Normalization]:
    """The run's validation transform, split where the batch crosses to the device.

    Returns (PIL RGB image -> uint8 tensor (C, H, W): resize to input_size / crop_pct, centre crop) and
    the normalisation, applied to the whole batch on the model's device (uint8 crosses, not float32).
    Together they equal timm's `create_transform(is_training=False)`. `data` holds the training run's
    data settings (mean, std, interpolation, crop_pct); what it lacks comes from timm's defaults.
    """
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, PILToTensor, Resize

    interpolation = str(data.get("interpolation", "bicubic"))
    # 'random' interpolation is a training-time choice; validation resizes with bicubic.
    interpolation = "bicubic" if interpolation == "random" else interpolation
    crop_pct = float(data.get("crop_pct", 0.875))
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    height, width = int(input_size[1]), int(input_size[2])
    # timm's eval transform: scale the shorter side (square inputs) or both sides, then centre crop.
    scale = math.floor(height / crop_pct) if height == width else (math.floor(height / crop_pct),
                                                                    math.floor(width / crop_pct))
    transform = Compose([
        Resize(scale, interpolation=InterpolationMode(interpolation)),
        CenterCrop((height, width)),
        PILToTensor(),
    ])
    mean = tuple(float(m) for m in data.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(s) for s in data.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        raise ValueError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
    return transform, Normalization(mean, std)


class Normalization:
    """uint8 batch (N, C, H, W) -> float, scaled to [0, 1] and normalised, on the batch's own device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean, self.std = mean, std
        self._cache: dict[Any, tuple[Any, Any]] = {}

    def __call__(self, batch: Any) -> Any:
        import torch

        if batch.device not in self._cache:
            mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1) * 255
            std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1) * 255
            self._cache[batch.device] = (mean, std)
        mean, std = self._cache[batch.device]
        return (batch.float() - mean) / std
