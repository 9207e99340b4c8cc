"""DeiT III's 3-Augment and simple random crop (SN-Netv2's recipe), in the train pipeline.

What a user relies on: every image gets exactly one of grayscale, solarisation and blur, about a
third each; colour jitter comes on top; the simple random crop keeps the whole image in view where
RandomResizedCrop zooms in; batches come out as the rest of the pipeline expects; a config that
mixes 3-Augment with RandAugment or device decoding is refused with the fix.
"""

from __future__ import annotations

import collections
import random

import pytest
import torch
from PIL import Image

from snnet_ray.data import DataConfig, build_train_loader, build_train_transform, write_digits_shards

THREE = dict(input_size=32, auto_augment=None, three_augment=True, color_jitter=0.0, re_prob=0.0)
RGB = (200, 40, 90)
# A uniform image stays uniform under crop, flip and blur, so each output names its one operation.
OUTCOMES = {
    RGB: "blur",  # blurring a uniform image changes nothing
    (255 - 200, 40, 90): "solarize",  # only values >= 128 are inverted
}


def _seed(seed: int) -> None:
    """What each loader worker does: Python's generator (crops, the choice) and torch's (jitter, blur)."""
    random.seed(seed)
    torch.manual_seed(seed)


def _outcome(out: torch.Tensor) -> str:
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    pixel = tuple(int(v) for v in out[:, 16, 16])
    assert (out == out[:, 16:17, 16:17]).all(), "a uniform image came out non-uniform"
    if pixel[0] == pixel[1] == pixel[2]:
        return "grayscale"
    return OUTCOMES.get(pixel, f"other {pixel}")


def test_each_image_gets_exactly_one_of_grayscale_solarize_and_blur():
    torch.manual_seed(0)
    transform = build_train_transform(DataConfig("/data", **THREE))
    image = Image.new("RGB", (40, 40), RGB)
    counts = collections.Counter(_outcome(transform(image)) for _ in range(600))
    assert set(counts) == {"grayscale", "solarize", "blur"}, counts
    assert all(150 <= n <= 250 for n in counts.values()), counts  # 200 each expected


def test_colour_jitter_comes_on_top_and_seeding_repeats_it():
    transform = build_train_transform(DataConfig("/data", **{**THREE, "color_jitter": 0.3}))
    image = Image.new("RGB", (40, 40), RGB)
    _seed(1)
    first = [transform(image) for _ in range(50)]
    kinds = collections.Counter(_outcome(x).split()[0] for x in first)
    assert kinds["other"] > 25, kinds  # jittered colours are none of the three exact values
    _seed(1)
    assert all(torch.equal(a, transform(image)) for a in first)


def _both_halves_seen(out: torch.Tensor) -> bool:
    red = (out[0] > 150) & (out[2] < 100)
    blue = (out[2] > 150) & (out[0] < 100)
    return bool(red.any()) and bool(blue.any())


def test_simple_random_crop_keeps_the_whole_image_in_view():
    image = Image.new("RGB", (64, 48), (220, 0, 0))
    image.paste((0, 0, 220), (32, 0, 64, 48))  # left half red, right half blue
    # grayscale would hide the colours; check the crop alone with the colour ops removed
    src = build_train_transform(DataConfig("/data", **THREE, simple_random_crop=True))
    rrc = build_train_transform(DataConfig("/data", **THREE))
    for t in (src, rrc):
        t.transforms = [s for s in t.transforms if type(s).__name__ != "RandomChoice"]
    torch.manual_seed(0)
    assert all(_both_halves_seen(src(image)) for _ in range(200))  # resize 32x42, crop 32 wide: both halves
    assert not all(_both_halves_seen(rrc(image)) for _ in range(200))  # RandomResizedCrop zooms into one


def test_without_device_finishing_images_are_normalised_floats():
    cfg = DataConfig("/data", **THREE, finish_on_device=False)
    out = build_train_transform(cfg)(Image.new("RGB", (40, 40), RGB))
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    assert out.abs().max() < 3 and out.min() < 0  # mean-subtracted, std-divided


def test_the_train_loader_yields_three_augmented_uint8_batches(tmp_path):
    write_digits_shards(str(tmp_path), shard_size=200)
    cfg = DataConfig(str(tmp_path), batch_size=16, num_workers=0, samples_per_epoch=32, shuffle_buffer=32,
                     shuffle_initial=8, **THREE, simple_random_crop=True)  # fmt: skip
    batches = list(build_train_loader(cfg, rank=0, world_size=1))
    assert len(batches) == 2
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32) and labels.shape == (16,)


def test_configs_mixing_three_augment_with_randaugment_or_device_decoding_are_refused():
    with pytest.raises(ValueError, match="three_augment replaces RandAugment; set auto_augment=null"):
        DataConfig("/data", three_augment=True)
    with pytest.raises(ValueError, match="decode_on_device bypasses"):
        DataConfig("/data", **THREE, decode_on_device=True)
    with pytest.raises(ValueError, match="simple_random_crop is part of three_augment"):
        DataConfig("/data", simple_random_crop=True)
    with pytest.raises(ValueError, match="color_jitter must be in"):
        DataConfig("/data", color_jitter=float("nan"))
