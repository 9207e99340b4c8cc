"""The digits demo set: written quickly, a fixed split, readable by timm and by our pipelines."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch
from PIL import Image

from snnet_ray.data import DataConfig, build_train_loader, build_val_loader, read_info, write_digits_shards


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return out, write_digits_shards(str(out))


def test_digits_shards(digits):
    out, summary = digits
    assert summary.splits == {"train": {"images": 1437, "shards": 12}, "validation": {"images": 360, "shards": 3}}
    assert summary.corrupt == [] and summary.written_images == 1797
    info = read_info(str(out))
    assert info.name == "digits" and info.num_classes == 10
    with tarfile.open(out / "validation-000000.tar") as tar:
        names = tar.getnames()
        image = Image.open(io.BytesIO(tar.extractfile(names[0]).read()))
    assert names[0].endswith(".png") and names[1].endswith(".cls")
    assert image.size == (32, 32) and image.mode == "RGB"


def test_digits_split_is_fixed(digits, tmp_path):
    out, _ = digits
    other = write_digits_shards(str(tmp_path / "other"), seed=5)
    assert other.splits == {"train": {"images": 1437, "shards": 12}, "validation": {"images": 360, "shards": 3}}
    for name in read_info(str(out)).split("val").filenames:  # val does not depend on the seed
        assert (out / name).read_bytes() == (tmp_path / "other" / name).read_bytes()
    assert (out / "train-000000.tar").read_bytes() != (tmp_path / "other" / "train-000000.tar").read_bytes()


def test_timm_reads_digits(digits):
    import timm.data

    out, _ = digits
    for split, n in (("train", 1437), ("val", 360)):
        dataset = timm.data.create_dataset("wds/digits", root=str(out), split=split)
        labels = [label for _, label in dataset]
        assert len(labels) == n and set(labels) == set(range(10))


def test_our_pipelines_read_digits(digits):
    out, _ = digits
    cfg = DataConfig(str(out), input_size=32, batch_size=64, num_workers=0, mixup_alpha=0.0, cutmix_alpha=0.0)
    loader = build_train_loader(cfg, rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == loader.steps_per_epoch == 1437 // 64
    images, labels = batches[0]
    # uint8 NCHW: normalisation and Mixup/CutMix run on the worker's device (DeviceFinisher)
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.long and set(torch.cat([b[1] for b in batches]).tolist()) == set(range(10))
    val = list(build_val_loader(cfg, rank=0, world_size=1))
    assert sum(len(b.keys) for b in val) == 360
    # normalised with the configured mean/std: the black background becomes (0 - mean) / std
    darkest = val[0].images.amin(dim=(0, 2, 3))
    assert torch.allclose(darkest, -torch.tensor(cfg.mean) / torch.tensor(cfg.std), atol=0.05)
