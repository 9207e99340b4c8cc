"""Train and validation pipelines over real digits shards: ranks, workers, URLs and broken data."""

from __future__ import annotations

import collections
import io
import logging
import shutil
import tarfile

import pytest
import torch

from snnet_ray.data import (
    CorruptShardError,
    DataConfig,
    build_train_loader,
    build_val_loader,
    rank_and_world_size,
    read_info,
    write_digits_shards,
)
from snnet_ray.data.device import DeviceFinisher

SMALL = dict(input_size=32, batch_size=32, shuffle_buffer=64, shuffle_initial=16)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits in shards of 100: train 14 x 100 + 37, val 3 x 100 + 60."""
    out = tmp_path_factory.mktemp("digits100")
    write_digits_shards(str(out), shard_size=100)
    return out


@pytest.fixture
def broken(digits, tmp_path):
    """A copy of the digits shards to damage."""
    return shutil.copytree(digits, tmp_path / "broken")


def shard_keys(root, split) -> dict[str, list[str]]:
    """What each shard holds, read with tarfile alone."""
    keys = {}
    for name in read_info(str(root)).split(split).filenames:
        with tarfile.open(root / name) as tar:
            keys[name] = [n.split(".")[0] for n in tar.getnames() if n.endswith(".cls")]
    return keys


@pytest.mark.parametrize("shard_size", [500, 100])
def test_train_epochs_have_equal_steps_on_every_rank_with_uneven_shards(digits, tmp_path, shard_size):
    root = digits if shard_size == 100 else tmp_path / "digits500"
    if shard_size == 500:  # 3 shards (500, 500, 437) for 2 ranks x 2 workers
        write_digits_shards(str(root), shard_size=500)
    cfg = DataConfig(str(root), num_workers=2, **SMALL)
    counts, first = {}, {}
    for rank in range(2):
        loader = build_train_loader(cfg, rank=rank, world_size=2)
        assert loader.steps_per_epoch == 1437 // (2 * 32) == len(loader)
        for epoch in range(2):
            batches = list(loader)
            counts[rank, epoch] = len(batches)
            first[rank, epoch] = batches[0][0]
            for images, targets in batches:
                # uint8 NCHW crops and class indices leave the loader; the device finishes them
                assert images.shape == (32, 3, 32, 32) and images.dtype == torch.uint8
                assert targets.shape == (32,) and targets.dtype == torch.long
    x, soft = DeviceFinisher(cfg, 10, "cpu")(images, targets)
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    # mixup/cutmix on: soft, label-smoothed targets that sum to one
    assert soft.shape == (32, 10) and torch.allclose(soft.sum(1), torch.ones(32))
    assert set(counts.values()) == {22}
    assert not torch.equal(first[0, 0], first[1, 0])  # ranks read different data
    assert not torch.equal(first[0, 0], first[0, 1])  # and epochs differ


def test_train_epoch_is_repeatable(digits):
    cfg = DataConfig(str(digits), num_workers=2, samples_per_epoch=256, **SMALL)
    a = list(build_train_loader(cfg, rank=1, world_size=2, epoch=3))
    loader = build_train_loader(cfg, rank=1, world_size=2)
    loader.set_epoch(3)
    b = list(loader)
    assert len(a) == len(b) == 4
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_validation_reads_every_sample_once_over_2_ranks_x_2_workers(digits):
    cfg = DataConfig(str(digits), num_workers=2, val_batch_size=24, **SMALL)
    expected = shard_keys(digits, "val")
    seen, lasts, per_rank = collections.Counter(), collections.Counter(), []
    for rank in range(2):
        loader = build_val_loader(cfg, rank=rank, world_size=2)
        batches = list(loader)
        assert len(batches) == len(loader)
        per_rank.append(sum(len(b.keys) for b in batches))
        assert per_rank[-1] == loader.num_samples
        done = set()
        for b in batches:
            assert b.shard not in done, "a batch came after its shard's last batch"
            assert set(b.keys) <= set(expected[b.shard]), "a batch mixed shards"
            assert b.images.shape == (len(b.keys), 3, 32, 32) and b.targets.shape == (len(b.keys),)
            seen.update((b.shard, k) for k in b.keys)
            if b.last:
                lasts[b.shard] += 1
                done.add(b.shard)
    assert seen == collections.Counter((s, k) for s, keys in expected.items() for k in keys)
    assert lasts == dict.fromkeys(expected, 1)
    assert sorted(per_rank) == [160, 200]  # ranks may differ; together they cover all 360


def test_validation_of_a_subset_of_shards(digits):
    cfg = DataConfig(str(digits), num_workers=1, **SMALL)
    wanted = ["validation-000001.tar", "validation-000003.tar"]
    got = collections.Counter()
    for rank in range(2):
        for b in build_val_loader(cfg, rank=rank, world_size=2, shards=wanted):
            got[b.shard] += len(b.keys)
    assert got == {"validation-000001.tar": 100, "validation-000003.tar": 60}
    # more ranks than shards: some ranks get none, and nothing is read twice
    loaders = [build_val_loader(cfg, rank=r, world_size=6) for r in range(6)]
    assert [loader.num_samples for loader in loaders] == [100, 100, 100, 60, 0, 0]
    assert sum(len(b.keys) for loader in loaders for b in loader) == 360
    with pytest.raises(ValueError, match="validation-000009.tar"):
        build_val_loader(cfg, rank=0, world_size=1, shards=["validation-000009.tar"])


def test_pipe_urls_and_fsspec_file_systems(digits):
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in digits.iterdir():
        memory.pipe(f"/digits-test/{path.name}", path.read_bytes())
    try:
        for root, workers in ((f"pipe:cat {digits}", 2), ("memory://digits-test", 0)):
            cfg = DataConfig(root, num_workers=workers, samples_per_epoch=128, **SMALL)
            assert read_info(root).split("val").num_samples == 360
            assert sum(len(b.keys) for b in build_val_loader(cfg, rank=0, world_size=1)) == 360
            assert len(list(build_train_loader(cfg, rank=0, world_size=1))) == 4
        memory.rm("/digits-test/validation-000002.tar")
        cfg = DataConfig("memory://digits-test", num_workers=0, **SMALL)
        with pytest.raises(FileNotFoundError, match="memory://digits-test/validation-000002.tar is missing"):
            list(build_val_loader(cfg, rank=0, world_size=1))
    finally:
        memory.rm("/digits-test", recursive=True)


def test_object_store_reader_without_fsspec_driver(digits):
    # s3:// and gs:// fall back to pyarrow's file systems when s3fs/gcsfs are not installed;
    # pyarrow resolves file:// URIs through the same code path.
    from snnet_ray.data.storage import _open_pyarrow

    url = f"file://{digits}/validation-000000.tar"
    with _open_pyarrow(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        assert sum(1 for m in tar if m.name.endswith(".cls")) == 100
    with pytest.raises(FileNotFoundError, match="validation-000009.tar does not exist"):
        _open_pyarrow(f"file://{digits}/validation-000009.tar")


def test_missing_shard_is_a_clear_error(broken):
    (broken / "validation-000002.tar").unlink()
    (broken / "train-000005.tar").unlink()
    cfg = DataConfig(str(broken), num_workers=0, **SMALL)
    with pytest.raises(FileNotFoundError, match="validation-000002.tar is missing"):
        build_val_loader(cfg, rank=0, world_size=1)
    with pytest.raises(FileNotFoundError, match="train-000005.tar is missing"):
        build_train_loader(cfg, rank=0, world_size=1)
    assert len(list(build_val_loader(cfg, rank=0, world_size=1, shards=["validation-000001.tar"]))) == 4
    with pytest.raises(FileNotFoundError, match="no _info.json"):
        build_val_loader(cfg.replace(root=str(broken / "nowhere")), rank=0, world_size=1)


def corrupt_image(path, index: int) -> str:
    """Overwrite the `index`-th image of a shard with bytes that are no image; returns its key."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    images = [i for i, (m, _) in enumerate(members) if m.name.endswith(".png")]
    member, data = members[images[index]]
    members[images[index]] = (member, b"\x89PNG broken" + data[40:80])
    with tarfile.open(path, "w") as tar:
        for m, d in members:
            m.size = len(d)
            tar.addfile(m, io.BytesIO(d))
    return member.name.split(".")[0]


def truncate(path, member: int, *, clean: bool = False) -> None:
    """Cut a shard inside the data of its `member`-th member, or cleanly just before it."""
    with tarfile.open(path) as tar:
        m = tar.getmembers()[member]
    cut = m.offset if clean else m.offset_data + m.size // 2
    path.write_bytes(path.read_bytes()[:cut])


def test_training_skips_corrupt_images_and_truncated_tars_with_a_running_count(broken, caplog):
    key = corrupt_image(broken / "train-000000.tar", 3)
    truncate(broken / "train-000001.tar", 61)
    cfg = DataConfig(str(broken), num_workers=0, **SMALL)
    loader = build_train_loader(cfg, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="snnet_ray.data"):
        batches = list(loader)
    assert len(batches) == loader.steps_per_epoch == 1437 // 32
    assert loader.skipped >= 2
    log = caplog.text
    assert f"skipped image {key} in train-000000.tar" in log
    assert "in train-000001.tar: truncated or corrupt" in log
    assert "skipped so far on this rank" in log


@pytest.mark.parametrize("damage", ["image", "truncated", "short"])
def test_validation_errors_name_the_shard_and_key(broken, damage):
    shard = broken / "validation-000001.tar"
    if damage == "image":
        key = corrupt_image(shard, 7)
        match = f"shard validation-000001.tar, key {key}: image does not decode"
    elif damage == "truncated":
        truncate(shard, 61)
        match = "validation-000001.tar is truncated or corrupt after key digit_"
    else:
        truncate(shard, 20, clean=True)  # a clean cut: only the count shows it
        match = "validation-000001.tar holds 10 readable samples but _info.json lists 100"
    cfg = DataConfig(str(broken), num_workers=2, **SMALL)
    with pytest.raises(CorruptShardError, match=match):
        for _ in build_val_loader(cfg, rank=0, world_size=1):
            pass


def test_rank_and_world_size_sources(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world_size() == (0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert rank_and_world_size() == (3, 4)
    assert rank_and_world_size(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="rank"):
        rank_and_world_size(2, 2)


def test_data_config_checks_and_timm_defaults():
    with pytest.raises(ValueError, match="batch_size must be even"):
        DataConfig("/data", batch_size=33)
    assert DataConfig("/data", batch_size=33, mixup_alpha=0, cutmix_alpha=0).batch_size == 33
    with pytest.raises(ValueError, match="no field"):
        DataConfig("/data").replace(batchsize=4)
    timm_cfg = {
        "input_size": (3, 256, 256),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "crop_pct": 0.9,
    }
    cfg = DataConfig.from_timm("/data", timm_cfg, batch_size=8)
    assert (cfg.input_size, cfg.mean, cfg.interpolation, cfg.crop_pct, cfg.batch_size) == (
        256,
        (0.5, 0.5, 0.5),
        "bilinear",
        0.9,
        8,
    )


def test_train_transform_survives_every_randaugment_magnitude():
    # magnitude 10 asks timm's posterize for 0 bits, which Pillow 13 rejects
    from PIL import Image

    from snnet_ray.data import build_train_transform

    transform = build_train_transform(DataConfig("/data", input_size=16, auto_augment="rand-m10-mstd0-n3-inc1"))
    image = Image.new("RGB", (20, 20), (200, 100, 50))
    assert all(transform(image).shape == (3, 16, 16) for _ in range(100))


def test_device_finishing_matches_the_cpu_pipeline_normalisation(digits):
    """Without augmentation randomness, finishing a uint8 batch on the device gives what the CPU
    workers gave (normalised float), from a quarter of the bytes; erasing and mixing keep shapes."""
    plain = dict(
        SMALL, re_prob=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0,
        auto_augment=None, color_jitter=0.0,
    )
    cfg = DataConfig(str(digits), num_workers=0, samples_per_epoch=64, **plain)
    images, labels = next(iter(build_train_loader(cfg, rank=0, world_size=1)))
    cpu_images, cpu_labels = next(iter(build_train_loader(cfg.replace(finish_on_device=False), rank=0, world_size=1)))
    assert images.dtype == torch.uint8 and cpu_images.dtype == torch.float32
    x, y = DeviceFinisher(cfg, 10, "cpu")(images, labels)
    torch.testing.assert_close(x, cpu_images, atol=1e-5, rtol=1e-5)
    assert torch.equal(y, cpu_labels)
    with pytest.raises(TypeError, match="uint8"):
        DeviceFinisher(cfg, 10, "cpu")(x, y)


def test_loader_workers_come_from_the_cpus_per_worker():
    from snnet_ray.train.config import load_experiment

    cfg = load_experiment("deit_ti_s_b_imagenet", ["data.root=/data", "scaling.cpus_per_worker=12"])
    assert cfg.data.num_workers == 11  # one CPU for the training process
    cfg = load_experiment("deit_ti_s_b_imagenet", ["data.root=/data", "data.num_workers=3"])
    assert cfg.data.num_workers == 3
    assert cfg.data.pin_memory and cfg.data.finish_on_device
    with pytest.raises(ValueError, match="decode_on_device needs finish_on_device"):
        DataConfig("/data", finish_on_device=False, decode_on_device=True)


def test_jpeg_bytes_are_decoded_and_cropped_where_the_batch_is_finished(tmp_path):
    """data.decode_on_device: the loader ships JPEG bytes; the finisher decodes (nvJPEG on CUDA,
    the same torchvision decoder on this CPU), crops and flips them, then normalises and mixes."""
    import numpy as np
    from PIL import Image

    from snnet_ray.data import write_imagefolder_shards

    rng = np.random.default_rng(0)
    for i in range(8):
        path = tmp_path / "src" / "train" / f"c{i % 2}" / f"img{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path, format="JPEG")
    write_imagefolder_shards(str(tmp_path / "src"), str(tmp_path / "shards"), shard_size=8, workers=1, progress=False)
    cfg = DataConfig(str(tmp_path / "shards"), input_size=32, batch_size=4, num_workers=0, decode_on_device=True,
                     shuffle_buffer=4, shuffle_initial=2)
    encoded, labels = next(iter(build_train_loader(cfg, rank=0, world_size=1)))
    assert isinstance(encoded, list) and all(e.dtype == torch.uint8 and e.ndim == 1 for e in encoded)
    x, soft = DeviceFinisher(cfg, 2, "cpu")(encoded, labels)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert soft.shape == (4, 2)
