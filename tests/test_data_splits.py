"""The validation split under both names: timm's `validation` (what we write) and our older `val`.

Shards written by timm's tooling call it `validation` and list only that key; older snnet-ray shards
call it `val`. Our loaders read either with either name, and timm reads ours with either name.
"""

from __future__ import annotations

import json
import os

import pytest

from snnet_ray.data import DataConfig, build_val_loader, read_info, write_digits_shards
from snnet_ray.data.splits import canonical_splits, resolve_split


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    write_digits_shards(str(out), shard_size=200)
    return out


def _val_samples(root, split: str) -> int:
    cfg = DataConfig(str(root), input_size=16, batch_size=64, num_workers=0, val_split=split)
    return sum(len(batch.keys) for batch in build_val_loader(cfg, rank=0, world_size=1))


def test_shards_are_written_as_validation_and_info_names_both(digits):
    assert sorted(os.listdir(digits))[-2:] == ["validation-000000.tar", "validation-000001.tar"]
    splits = json.loads((digits / "_info.json").read_text())["splits"]
    assert set(splits) == {"train", "validation", "val"}
    assert splits["val"]["name"] == "validation"  # the alias says which split it is
    assert splits["val"]["filenames"] == splits["validation"]["filenames"]
    info = read_info(str(digits))
    assert set(info.splits) == {"train", "validation"}  # one split, not two
    assert info.split("val") is info.split("validation")
    assert DataConfig(str(digits)).val_split == "validation"


def test_loaders_read_timm_convention_shards_under_either_name(digits, tmp_path):
    # timm's tooling: validation-*.tar under another prefix, _info.json with the `validation` key only.
    timm_root = tmp_path / "imagenet-timm"
    timm_root.mkdir()
    info = json.loads((digits / "_info.json").read_text())
    split = info["splits"]["validation"]
    names = [f"imagenet-1k-validation-{i:04d}.tar" for i in range(len(split["filenames"]))]
    for old, new in zip(split["filenames"], names):
        os.link(digits / old, timm_root / new)
    timm_info = {
        "name": "imagenet-1k",
        "num_classes": info["num_classes"],
        "splits": {"validation": {**split, "name": "validation", "filenames": names}},
    }
    (timm_root / "_info.json").write_text(json.dumps(timm_info))
    assert _val_samples(timm_root, "validation") == 360
    assert _val_samples(timm_root, "val") == 360


def test_older_val_shards_read_with_the_default_name(tmp_path):
    out = tmp_path / "old"
    write_digits_shards(str(out), shard_size=200, val_name="val")
    assert (out / "val-000000.tar").is_file()
    assert _val_samples(out, DataConfig(str(out)).val_split) == 360
    # rerunning the default writer (make demo on an old checkout) keeps that set instead of refusing it
    info = json.loads((out / "_info.json").read_text())
    del info["splits"]["validation"]  # as written before the alias existed
    (out / "_info.json").write_text(json.dumps(info))
    again = write_digits_shards(str(out), shard_size=200)
    assert again.written_shards == 0 and "val" in again.splits and not (out / "validation-000000.tar").exists()


def test_split_names_resolve_and_clash_clearly():
    assert resolve_split("val", {"train", "validation"}) == "validation"
    assert resolve_split("validation", {"val"}) == "val"
    assert resolve_split("test", {"val"}) == "test"
    assert canonical_splits({"train": 1, "val": 2}) == {"train": 1, "validation": 2}
    with pytest.raises(ValueError, match="both the validation split"):
        canonical_splits({"val": 1, "validation": 2})
    with pytest.raises(ValueError, match="not 'valid'"):
        canonical_splits({"val": 1}, val_name="valid")
