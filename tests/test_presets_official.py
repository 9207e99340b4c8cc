"""The ImageNet presets follow the official SN-Net recipes: Swin's peak lr, 22k->1k Swin anchors,
RegNetY-160 hard distillation in both, repeated augmentation where the official DeiT recipe has it."""

from __future__ import annotations

import pytest
import timm
import torch

from snnet_ray.data import DataConfig, build_train_loader
from snnet_ray.train.config import load_experiment


def test_swin_preset_resolves_to_peak_lr_1e3_at_batch_1024_with_22k_anchors():
    cfg = load_experiment("swin_ti_s_b_imagenet")
    assert cfg.global_batch_size == 1024 and cfg.peak_lr == pytest.approx(1e-3)
    assert (cfg.optim.anchor_lr_scale, cfg.optim.stitch_lr_scale) == (0.1, 1.0)
    with torch.device("meta"):
        tags = [timm.create_model(a, pretrained=False).pretrained_cfg["tag"] for a in cfg.model.anchors]
    assert tags == ["ms_in22k_ft_in1k"] * 3
    assert cfg.model.rule == "paper" and cfg.data.repeated_aug == 1
    # a batch change rescales the peak as the official code does (lr x batch / 512)
    assert load_experiment("swin_ti_s_b_imagenet", ["scaling.num_workers=4"]).peak_lr == pytest.approx(5e-4)


@pytest.mark.parametrize("preset", ["deit_ti_s_b_imagenet", "swin_ti_s_b_imagenet"])
def test_both_presets_distil_from_regnety_160_and_say_when_its_file_is_missing(preset, tmp_path):
    cfg = load_experiment(preset)
    assert cfg.loss.teacher == "regnety_160" and timm.is_model(cfg.loss.teacher)
    assert (cfg.loss.soft_weight, cfg.loss.distill_weight) == (0.5, 0.5)  # hard distillation, alpha 0.5
    with pytest.raises(
        FileNotFoundError, match=r"loss.teacher_weights not found: .*regnety_160.*--set loss.teacher=null"
    ):
        cfg.loss.check_files()
    weights = tmp_path / "regnety_160.pth"
    weights.write_bytes(b"")
    load_experiment(preset, [f"loss.teacher_weights={weights}"]).loss.check_files()
    off = load_experiment(preset, ["loss.teacher=null", "loss.teacher_weights=null", "loss.soft_weight=null",
                                   "loss.distill_weight=null"])  # fmt: skip
    assert off.loss.teacher is None


def test_repeated_augmentation_on_for_deit_and_each_image_augmented_anew(tmp_path):
    assert load_experiment("deit_ti_s_b_imagenet").data.repeated_aug == 3
    from snnet_ray.data import write_digits_shards

    write_digits_shards(tmp_path)
    cfg = DataConfig(str(tmp_path), input_size=32, batch_size=12, num_workers=0, shuffle_buffer=1, shuffle_initial=1,
                     auto_augment=None, mixup_alpha=0, cutmix_alpha=0, re_prob=0, repeated_aug=3,
                     samples_per_epoch=24)  # fmt: skip
    images, labels = next(iter(build_train_loader(cfg, rank=0, world_size=1)))
    assert images.shape[0] == 12
    # no shuffling: copies of one image follow each other, same label, different crops
    for k in range(0, 12, 3):
        assert len(set(labels[k : k + 3].tolist())) == 1
        assert not torch.equal(images[k], images[k + 1])
    with pytest.raises(ValueError, match="repeated_aug must be in 1..16"):
        DataConfig(str(tmp_path), repeated_aug=0)
