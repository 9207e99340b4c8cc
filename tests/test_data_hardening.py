"""Shards as hostile input: `_info.json` names, `pipe:` roots, labels, symlink loops, empty shards."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest
from PIL import Image

from snnet_ray.data import CorruptShardError, DataConfig, build_train_loader, build_val_loader, read_info
from snnet_ray.data.imagefolder import list_imagefolder, write_imagefolder_shards
from snnet_ray.data.info import shard_url
from snnet_ray.data.shards import ImageRecord, write_shards

SMALL = dict(input_size=16, batch_size=2, shuffle_buffer=4, shuffle_initial=2, num_workers=0)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (seed * 40 % 255, 80, 120)).save(buf, "PNG")
    return buf.getvalue()


def _write(out, labels: dict[str, list[int]], classes=("a", "b")) -> None:
    splits = {split: [ImageRecord(key=f"{split}_{i}", label=lab, source=f"mem{i}", data=_png(i))
                      for i, lab in enumerate(labs)] for split, labs in labels.items()}
    write_shards(splits, str(out), name="t", class_names=list(classes), shard_size=4, progress=False)


@pytest.mark.parametrize("name", ["x;touch pwned.tar", "../outside.tar", "/etc/passwd", "a/../../b.tar",
                                  "$(id).tar", "a b.tar", "`id`.tar", ""])
def test_info_names_cannot_leave_the_root_or_reach_a_shell(tmp_path, name):
    _write(tmp_path, {"train": [0, 1, 0, 1], "val": [0, 1]})
    info = json.loads((tmp_path / "_info.json").read_text())
    info["splits"]["validation"]["filenames"] = [name]
    (tmp_path / "_info.json").write_text(json.dumps(info))
    for root in (str(tmp_path), f"pipe:cat {tmp_path}"):
        with pytest.raises(ValueError, match="is not a shard file name"):
            read_info(root)
    with pytest.raises(ValueError, match="is not a shard file name"):
        shard_url(f"pipe:cat {tmp_path}", name)
    assert not (tmp_path / "pwned.tar").exists()


def test_pipe_roots_quote_shard_names(tmp_path):
    _write(tmp_path, {"train": [0, 1, 0, 1], "val": [0, 1]})
    info = read_info(f"pipe:cat {tmp_path}")
    assert info.urls("val") == [f"pipe:cat {tmp_path}/validation-000000.tar"]  # safe names need no quotes
    assert shard_url("pipe:aws s3 cp s3://b/x", "sub/val=1.tar") == "pipe:aws s3 cp s3://b/x/sub/val=1.tar"
    cfg = DataConfig(f"pipe:cat {tmp_path}", **SMALL)
    assert sum(len(b.keys) for b in build_val_loader(cfg, rank=0, world_size=1)) == 2


def test_bad_counts_in_info_are_refused(tmp_path):
    _write(tmp_path, {"train": [0, 1, 0, 1], "val": [0, 1]})
    info = json.loads((tmp_path / "_info.json").read_text())
    info["splits"]["validation"]["shard_lengths"] = [-5]
    (tmp_path / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="shard_lengths must be a whole number"):
        read_info(str(tmp_path))


def test_labels_outside_num_classes_are_skipped_in_training_and_stop_validation(tmp_path, caplog):
    # Two classes; train_3 and val_1 carry label 7.
    _write(tmp_path, {"train": [0, 1, 0, 7, 1, 0, 1, 0], "val": [0, 7, 1]})
    cfg = DataConfig(str(tmp_path), mixup_alpha=0.0, cutmix_alpha=0.0, **SMALL)
    loader = build_train_loader(cfg, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="snnet_ray.data"):
        labels = [int(t) for _, targets in loader for t in targets]
    assert labels and all(0 <= t < 2 for t in labels)
    assert loader.skipped >= 1
    assert "skipped sample train_3 in train-00000" in caplog.text
    assert "label 7 is outside [0, 2)" in caplog.text
    with pytest.raises(CorruptShardError, match=r"shard validation-000000.tar, key val_1: label 7 is outside \[0, 2\)"):
        list(build_val_loader(cfg, rank=0, world_size=1))


def _imagefolder(src) -> None:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = src / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                (d / f"{cls}{i}.png").write_bytes(_png(i))


def test_imagefolder_symlink_loops_are_walked_once(tmp_path, caplog):
    src = tmp_path / "src"
    _imagefolder(src)
    os.symlink(src / "train" / "a", src / "train" / "a" / "loop")  # a -> a/loop -> a ...
    os.symlink(src / "train", src / "train" / "b" / "up")  # b/up -> train -> a, b, ...
    os.symlink(src / "train" / "a", src / "train" / "b" / "again")  # a second way into a
    with caplog.at_level(logging.WARNING):
        splits, classes = list_imagefolder(str(src))
    assert classes == ["a", "b"]
    assert len(splits["train"]) == 4 and len(splits["val"]) == 4
    assert sorted(os.path.basename(r.source) for r in splits["train"]) == ["a0.png", "a1.png", "b0.png", "b1.png"]
    assert "symlink loop" in caplog.text


def test_a_shard_of_only_corrupt_images_is_not_written(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _imagefolder(src)
    for i in range(2):  # val/b holds only broken files: with 2 per shard, val-000001 would be empty
        (src / "val" / "b" / f"b{i}.png").write_bytes(b"not an image")
    summary = write_imagefolder_shards(str(src), str(out), shard_size=2, workers=1, progress=False)
    assert not (out / "validation-000001.tar").exists()
    info = read_info(str(out))
    assert info.split("val").filenames == ("validation-000000.tar",) and info.split("val").num_samples == 2
    assert summary.splits["validation"] == {"images": 2, "shards": 1} and len(summary.corrupt) == 2
    # A rerun finds it finished: nothing is written again.
    again = write_imagefolder_shards(str(src), str(out), shard_size=2, workers=1, progress=False)
    assert again.written_shards == 0
    cfg = DataConfig(str(out), **SMALL)
    assert sum(len(b.keys) for b in build_val_loader(cfg, rank=0, world_size=1)) == 2


def test_a_member_over_the_size_limit_is_not_read(tmp_path, monkeypatch):
    from snnet_ray.data import samples

    _write(tmp_path, {"train": [0, 1, 0, 1], "val": [0, 1]})
    monkeypatch.setattr(samples, "MAX_MEMBER_BYTES", 50)  # every PNG here is larger; the bound is 256 MiB
    cfg = DataConfig(str(tmp_path), **SMALL)
    with pytest.raises(CorruptShardError, match=r"key val_0: member val_0.png is over 50 bytes"):
        list(build_val_loader(cfg, rank=0, world_size=1))
