"""Decoding request images safely: JPEG and PNG only, bounded in bytes, pixels and count.

Every byte of a request is hostile. Pillow reads only the header on `Image.open`; the pixel count is
checked against `max_pixels` before any pixel is decoded (a 50 kB PNG can claim 60 000 x 60 000),
Pillow's own decompression-bomb guard is an error rather than a warning, and truncated files are
refused rather than padded. A decoded image becomes the model's input with the validation transform
the model was trained with (resize, centre crop, normalise).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ALLOWED_FORMATS", "ImageError", "build_transform", "decode_image"]

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


def build_transform(data: Mapping[str, Any], input_size: tuple[int, int, int]) -> Callable:
    """PIL RGB image -> normalised float tensor (C, H, W): timm's validation transform.

    `data` holds the training run's data settings (mean, std, interpolation, crop_pct); what it
    lacks comes from timm's defaults for the anchors.
    """
    from timm.data import create_transform

    interpolation = data.get("interpolation", "bicubic")
    return create_transform(
        input_size=tuple(input_size),
        is_training=False,
        # 'random' interpolation is a training-time choice; validation resizes with bicubic.
        interpolation="bicubic" if interpolation == "random" else interpolation,
        mean=tuple(data.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(data.get("std", (0.229, 0.224, 0.225))),
        crop_pct=float(data.get("crop_pct", 0.875)),
    )
