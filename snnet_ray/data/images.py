"""Image bytes: which format they hold, whether they decode, and decoding to RGB.

Shards keep the original bytes, so the member's extension follows the bytes, not the file name:
ImageNet's train set holds a PNG named `.JPEG` and CMYK JPEGs; the first becomes `.png`, the second
stays `.jpg` and is converted to RGB when decoded.
"""

from __future__ import annotations

import io
import zlib

from PIL import Image

__all__ = ["DECODE_ERRORS", "IMAGE_EXTENSIONS", "decode_image", "image_extension"]

# Shard member extension per PIL format; these are the formats timm's wds reader looks for.
IMAGE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# Member extensions read back as images (webdataset lower-cases them).
READ_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# What broken image bytes raise in PIL; anything else is a bug and propagates.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, Image.DecompressionBombError)


def image_extension(data: bytes) -> str:
    """Decode `data` fully and return its shard extension ('jpg', 'png', 'webp').

    Raises ValueError saying why when the bytes are not a complete image of a supported format.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            if fmt not in IMAGE_EXTENSIONS:
                raise ValueError(f"unsupported image format {fmt} (supported: JPEG, PNG, WEBP)")
            if fmt == "JPEG":
                # DCT-domain downscaling still entropy-decodes every block (so truncation is caught)
                # but skips most of the inverse transform.
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
            if img.width < 1 or img.height < 1:
                raise ValueError("image has no pixels")
    except ValueError:
        raise
    except DECODE_ERRORS as err:
        raise ValueError(f"{type(err).__name__}: {err}") from err
    return IMAGE_EXTENSIONS[fmt]


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB PIL image (raises one of DECODE_ERRORS when broken)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    # convert() copies even when the mode already matches; skip that copy for the common case.
    return img if img.mode == "RGB" else img.convert("RGB")
