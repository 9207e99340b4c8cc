"""Shard writing from an ImageFolder tree: format, corrupt files, reruns, parallel writers, CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from snnet_ray.cli import main as cli_main
from snnet_ray.data import DataConfig, build_val_loader, read_info, write_imagefolder_shards
from snnet_ray.data import shards as shards_module

CLASSES = ("cat", "dog", "eel")


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), seed % 255, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_imagefolder(root, train_per_class=7, val_per_class=3) -> dict[str, bytes]:
    """An ImageNet-style tree; returns {relative path: bytes}."""
    files = {}
    for s, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for c, cls in enumerate(CLASSES):
            for i in range(n):
                files[f"{split}/{cls}/{cls}_{i}.JPEG"] = _jpeg(s * 1000 + c * 100 + i)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def tar_members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def all_members(out, split) -> dict[str, bytes]:
    members = {}
    for name in read_info(str(out)).split(split).filenames:
        members.update(tar_members(out / name))
    return members


def test_imagefolder_shards_hold_original_bytes_and_labels(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    files = make_imagefolder(src)
    # ImageNet has a PNG named .JPEG; a dotted stem; the same stem in two classes.
    (src / "train/cat/disguised.JPEG").write_bytes(_png(1))
    (src / "train/dog/a.b.c.jpg").write_bytes(_jpeg(99))
    (src / "train/eel/cat_0.JPEG").write_bytes(_jpeg(98))
    (src / "train/eel/notes.txt").write_text("not an image")

    summary = write_imagefolder_shards(str(src), str(out), shard_size=5, workers=1, progress=False)

    assert summary.splits == {"train": {"images": 24, "shards": 5}, "validation": {"images": 9, "shards": 2}}
    assert summary.images == 33 and summary.corrupt == [] and summary.bytes > 0
    assert sorted(os.listdir(out)) == ["_info.json"] + [f"train-{i:06d}.tar" for i in range(5)] + [
        "validation-000000.tar",
        "validation-000001.tar",
    ]
    info = read_info(str(out))
    assert info.num_classes == 3 and info.class_names == CLASSES
    assert info.split("train").shard_lengths == (5, 5, 5, 5, 4)

    train = all_members(out, "train")
    keys = {name.split(".", 1)[0] for name in train}
    assert all("." not in k for k in keys) and len(keys) == 24
    assert "a_b_c" in keys and "disguised" in keys
    assert {"cat_cat_0", "eel_cat_0"} <= keys  # colliding stems get their class folder
    assert train["disguised.png"] == _png(1)  # the bytes decide the extension, never re-encoded
    assert train["cat_cat_0.jpg"] == files["train/cat/cat_0.JPEG"]
    assert train["eel_cat_0.cls"] == b"2" and train["dog_3.cls"] == b"1"
    # the train split is shuffled into shards: the first shard is not just the first class
    first = {v for n, v in tar_members(out / "train-000000.tar").items() if n.endswith(".cls")}
    assert len(first) > 1
    # val keeps its sorted order and every val image is there byte for byte
    val = all_members(out, "val")
    assert val["eel_2.jpg"] == files["val/eel/eel_2.JPEG"]


def test_timm_reads_imagefolder_shards(tmp_path):
    import timm.data

    src, out = tmp_path / "src", tmp_path / "out"
    make_imagefolder(src)
    write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, progress=False)
    for split, n in (("train", 21), ("validation", 9), ("val", 9)):  # timm's name and ours
        dataset = timm.data.create_dataset("wds/src", root=str(out), split=split)
        items = list(dataset)
        assert len(items) == n
        assert {label for _, label in items} == {0, 1, 2}
        assert items[0][0].size == (40, 30)


def test_corrupt_images_are_reported_counted_and_left_out(tmp_path, caplog):
    src, out = tmp_path / "src", tmp_path / "out"
    make_imagefolder(src)
    truncated = src / "train/dog/truncated.JPEG"
    truncated.write_bytes(_jpeg(5, size=(200, 150))[:800])
    garbage = src / "val/cat/garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    bitmap = src / "train/cat/old.bmp"
    Image.new("RGB", (8, 8)).save(bitmap)

    with caplog.at_level(logging.WARNING):
        summary = write_imagefolder_shards(str(src), str(out), shard_size=8, workers=1, progress=False)

    reported = {c["path"]: c["reason"] for c in summary.corrupt}
    assert set(reported) == {str(truncated), str(garbage), str(bitmap)}
    assert "truncated" in reported[str(truncated)]
    assert "unsupported image format BMP" in reported[str(bitmap)]
    assert summary.splits["train"]["images"] == 21 and summary.splits["validation"]["images"] == 9
    assert str(garbage) in caplog.text and "3 corrupt or unreadable images" in summary.format()
    recorded = read_info(str(out)).extra["snnet_ray"]["corrupt"]
    assert {c["path"] for c in recorded} == set(reported)
    # what was written reads back exactly
    cfg = DataConfig(str(out), input_size=16, batch_size=4, num_workers=0)
    assert sum(len(b.keys) for b in build_val_loader(cfg, rank=0, world_size=1)) == 9


def test_rerun_keeps_finished_shards_and_resumes_an_interrupted_run(tmp_path, monkeypatch):
    src, out, clean = tmp_path / "src", tmp_path / "out", tmp_path / "clean"
    make_imagefolder(src)
    (out).mkdir()
    (out / "README").write_text("not ours")
    write_imagefolder_shards(str(src), str(clean), shard_size=4, workers=1, progress=False)

    # a run that dies after three shards
    real_write, calls = shards_module._write_shard, []

    def dying_write(task):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(task.name)
        return real_write(task)

    monkeypatch.setattr(shards_module, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, progress=False)
    monkeypatch.undo()
    assert not (out / "_info.json").exists()

    resumed = write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, progress=False)
    assert resumed.written_shards == resumed.shards - 3
    assert _shard_bytes(out) == _shard_bytes(clean)
    assert (out / "README").read_text() == "not ours"
    assert sorted(os.listdir(out)) == sorted([*os.listdir(clean), "README"])

    # a finished set is left alone; a deleted shard is written again
    mtimes = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    again = write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, progress=False)
    assert again.written_shards == 0 and again.images == resumed.images
    assert {f: os.path.getmtime(out / f) for f in os.listdir(out)} == mtimes
    (out / "train-000002.tar").unlink()
    repaired = write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, progress=False)
    assert repaired.written_shards == 1
    assert _shard_bytes(out) == _shard_bytes(clean)


def test_rerun_with_other_settings_refuses_unless_overwrite(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_imagefolder(src)
    write_imagefolder_shards(str(src), str(out), shard_size=2, workers=1, progress=False)
    with pytest.raises(ValueError, match="--overwrite"):
        write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, progress=False)
    (src / "train/cat/new.jpg").write_bytes(_jpeg(7))
    with pytest.raises(ValueError, match="other source files"):
        write_imagefolder_shards(str(src), str(out), shard_size=2, workers=1, progress=False)

    summary = write_imagefolder_shards(str(src), str(out), shard_size=4, workers=1, overwrite=True, progress=False)
    assert summary.splits["train"] == {"images": 22, "shards": 6}
    tars = sorted(f for f in os.listdir(out) if f.endswith(".tar"))
    assert tars == sorted(read_info(str(out)).split("train").filenames + read_info(str(out)).split("val").filenames)


def test_parallel_writers_write_the_same_shards(tmp_path):
    src = tmp_path / "src"
    make_imagefolder(src, train_per_class=10)
    one = write_imagefolder_shards(str(src), str(tmp_path / "one"), shard_size=4, workers=1, progress=False)
    two = write_imagefolder_shards(str(src), str(tmp_path / "two"), shard_size=4, workers=2, progress=False)
    assert two.written_shards == one.written_shards == 11
    assert two.images_per_s > 0
    assert _shard_bytes(tmp_path / "two") == _shard_bytes(tmp_path / "one")


def test_bad_sources_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_imagefolder_shards(str(tmp_path / "nope"), str(tmp_path / "out"), progress=False)
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="train/<class>"):
        write_imagefolder_shards(str(tmp_path / "flat"), str(tmp_path / "out"), progress=False)
    src = tmp_path / "src"
    make_imagefolder(src)
    (src / "val/zebra").mkdir()
    (src / "val/zebra/z.jpg").write_bytes(_jpeg(3))
    with pytest.raises(ValueError, match="zebra"):
        write_imagefolder_shards(str(src), str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match="local directory"):
        write_imagefolder_shards(str(src), "s3://bucket/out", progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        write_imagefolder_shards(str(src), str(tmp_path / "out"), shard_size=0, progress=False)


def test_cli_writes_and_prints_a_json_summary(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    make_imagefolder(src)
    argv = ["shards", "imagefolder", "--src", str(src), "--out", str(out), "--shard-size", "10"]
    assert cli_main([*argv, "--workers", "1", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and summary["images"] == 30 and summary["shards"] == 4
    assert summary["images_per_s"] > 0 and summary["bytes"] == sum(
        os.path.getsize(out / f) for f in os.listdir(out) if f.endswith(".tar")
    )
    assert cli_main(["shards", "info", str(out)]) == 0
    assert "21 samples in 3 shards" in capsys.readouterr().out
    assert cli_main(["shards", "imagefolder", "--src", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err


def _shard_bytes(out) -> dict[str, bytes]:
    return {f: (out / f).read_bytes() for f in sorted(os.listdir(out)) if f.endswith(".tar")}
