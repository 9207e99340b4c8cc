"""Parameter groups (anchor / stitch lr scales, no decay on norms, biases, tokens) and the schedule."""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny_families import tiny_snnet

from snnet_ray.train.optim import OptimConfig, build_optimizer, build_scheduler, param_groups


@pytest.fixture(scope="module")
def snnet():
    return tiny_snnet("vit")


def group_of(groups: list[dict], param: torch.nn.Parameter) -> dict:
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


def test_groups_scale_anchor_and_stitch_lr_and_skip_decay_where_timm_does(snnet):
    cfg = OptimConfig(lr=1e-3, weight_decay=0.05, anchor_lr_scale=0.1, stitch_lr_scale=1.0)
    groups = param_groups(snnet, cfg)
    names = dict(snnet.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(names)

    expect = {
        "anchors.0.model.blocks.0.attn.qkv.weight": (1e-4, 0.05),
        "anchors.0.model.blocks.0.attn.qkv.bias": (1e-4, 0.0),
        "anchors.0.model.blocks.0.norm1.weight": (1e-4, 0.0),
        "anchors.1.model.pos_embed": (1e-4, 0.0),
        "anchors.2.model.cls_token": (1e-4, 0.0),
        "anchors.2.model.head.weight": (1e-4, 0.05),
        "stitch_layers.0.weight": (1e-3, 0.05),
        "stitch_layers.0.bias": (1e-3, 0.0),
    }
    for name, (lr, wd) in expect.items():
        group = group_of(groups, names[name])
        assert (group["lr"], group["weight_decay"]) == pytest.approx((lr, wd)), name
    assert {g["name"] for g in groups} == {"anchors", "anchors_no_decay", "stitch_layers", "stitch_layers_no_decay"}


def test_schedule_warms_up_linearly_then_decays_to_min_lr_keeping_scales(snnet):
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, anchor_lr_scale=0.1)
    optimizer = build_optimizer(snnet, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(101):
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    stitch = [lr["stitch_layers"] for lr in lrs]
    anchor = [lr["anchors"] for lr in lrs]
    assert stitch[0] == pytest.approx(1e-6)
    assert stitch[5] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert stitch[10] == pytest.approx(1e-3)
    assert stitch[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert stitch[100] == pytest.approx(1e-5)
    assert all(a == pytest.approx(0.1 * s) for a, s in zip(anchor, stitch))
    assert all(x >= y for x, y in itertools.pairwise(stitch[10:]))


def test_schedule_resumes_from_its_state_dict(snnet):
    cfg = OptimConfig(lr=1e-3)
    opt_a = build_optimizer(snnet, cfg)
    sched_a = build_scheduler(opt_a, cfg, total_steps=50, warmup_steps=5)
    for _ in range(17):
        opt_a.step()
        sched_a.step()
    opt_b = build_optimizer(snnet, cfg)
    sched_b = build_scheduler(opt_b, cfg, total_steps=50, warmup_steps=5)
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b.load_state_dict(sched_a.state_dict())
    for _ in range(10):
        for sched, opt in ((sched_a, opt_a), (sched_b, opt_b)):
            opt.step()
            sched.step()
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]


def test_bad_settings_name_the_field(snnet):
    with pytest.raises(ValueError, match="optim.anchor_lr_scale must be > 0"):
        OptimConfig(anchor_lr_scale=0)
    with pytest.raises(ValueError, match="optim.min_lr=0.1 exceeds optim.lr"):
        OptimConfig(lr=1e-3, min_lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps=20 must lie in 0..total_steps=10"):
        build_scheduler(build_optimizer(snnet, OptimConfig()), OptimConfig(), total_steps=10, warmup_steps=20)
