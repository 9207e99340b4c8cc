"""The digits demo set: scikit-learn's bundled handwritten digits as 32x32 RGB PNG shards.

`sklearn.datasets.load_digits` holds 1,797 8x8 grey images (values 0..16) of 10 classes, shipped
with scikit-learn, so the demo and the tests train on real data without a download. Each image
is scaled to 0..255, upscaled to 32x32 (bicubic) and stored as RGB PNG. The train/val split is
fixed (stratified, 20% val, always the same images whatever `seed` is); `seed` only shuffles the
train split into shards.
"""

from __future__ import annotations

import io

from .shards import ImageRecord, ShardSummary, write_shards
from .splits import VAL_SPLIT

__all__ = ["DIGITS_CLASSES", "DIGITS_SIZE", "digits_records", "write_digits_shards"]

DIGITS_SIZE = 32
DIGITS_CLASSES = tuple(str(i) for i in range(10))
_VAL_FRACTION = 0.2
_SPLIT_SEED = 0  # the split never changes, so val accuracies stay comparable across runs


def write_digits_shards(
    out: str,
    *,
    shard_size: int = 128,
    workers: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    val_name: str = VAL_SPLIT,
) -> ShardSummary:
    """Write the digits set as `train-*.tar` (1,437 images) and `validation-*.tar` (360) into `out`
    (`val_name="val"`: `val-*.tar`, the name of older snnet-ray shards)."""
    return write_shards(
        digits_records(),
        out,
        name="digits",
        class_names=DIGITS_CLASSES,
        shard_size=shard_size,
        workers=workers,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        val_name=val_name,
    )


def digits_records() -> dict[str, list[ImageRecord]]:
    """The digits as in-memory PNG records per split, in data-set order."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        indices, test_size=_VAL_FRACTION, stratify=digits.target, random_state=_SPLIT_SEED
    )
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)

    def record(i: int) -> ImageRecord:
        img = Image.fromarray(pixels[i]).resize((DIGITS_SIZE, DIGITS_SIZE), Image.BICUBIC)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
        return ImageRecord(
            key=f"digit_{i:04d}", label=int(digits.target[i]), source=f"digits[{i}]", data=buf.getvalue()
        )

    return {
        "train": [record(int(i)) for i in sorted(train_idx)],
        "val": [record(int(i)) for i in sorted(val_idx)],
    }
