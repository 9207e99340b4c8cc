"""SN-Netv2 (Pan et al., arXiv 2307.00154) against the official code's enumeration and recipes.

Reference data in tests/data/snnetv2/ comes from ziplab/SN-Netv2 (commit dd17607), not from this
package: `official_v2_reference.json` lists the official config enumeration for DeiT3 depth pairs
12/12 (S/B) and 12/24 (S/L, B/L) as the official code builds it, and the official FLOPs groups
(gap 1.0) of DeiT3-S/L (its published FLOPs) and of SN-Net v1's DeiT-Ti/S/B (published FLOPs);
`official_recipes.json` holds the official training configs' numbers.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

from snnet_ray import SNNet
from snnet_ray.stitching.layers import LinearStitch, LoRAStitch
from snnet_ray.stitching.space import AnchorLayout
from snnet_ray.stitching.space_v2 import build_snnetv2_space, official_v2_id

DATA = Path(__file__).parent / "data" / "snnetv2"
REF = json.loads((DATA / "official_v2_reference.json").read_text())
RECIPES = json.loads((DATA / "official_recipes.json").read_text())

DEIT3 = {
    "s": "deit3_small_patch16_224.fb_in22k_ft_in1k",
    "b": "deit3_base_patch16_224.fb_in22k_ft_in1k",
    "l": "deit3_large_patch16_224.fb_in22k_ft_in1k",
}
# Tiny DeiT III pair with the S/L depth ratio (4 vs 8 blocks): seconds on a CPU.
TINY_V2 = (
    [
        ("deit3_small_patch16_224", dict(embed_dim=16, depth=4, num_heads=2)),
        ("deit3_large_patch16_224", dict(embed_dim=32, depth=8, num_heads=2)),
    ],
    dict(img_size=32, patch_size=8, num_classes=10),
)


def _official_view(cfg, layer_specs, pair: tuple[int, int]) -> dict:
    """A config of ours in the official notation (anchor 0 = the pair's smaller anchor)."""
    local = {pair[0]: 0, pair[1]: 1}
    return {
        "comb_id": [local[a] for a in cfg.anchors],
        "stitch_cfgs": [list(p) for p in cfg.positions],
        # official layer ids index the per-direction list of the switch's front anchor
        "stitch_layer_ids": [layer_specs[i].window for i in getattr(cfg, "layers", ())],
        "layer_fronts": [local[layer_specs[i].front] for i in getattr(cfg, "layers", ())],
    }


def _expected(official: dict) -> dict:
    ids = official["stitch_layer_ids"][: len(official["stitch_cfgs"])]  # the official list ends with -1
    return {
        "comb_id": official["comb_id"],
        "stitch_cfgs": official["stitch_cfgs"],
        "stitch_layer_ids": ids,
        "layer_fronts": official["comb_id"][: len(ids)],
    }


@pytest.fixture(scope="module")
def deit3_sbl() -> SNNet:
    return SNNet.from_timm([DEIT3[k] for k in "sbl"], rule="snnetv2", lora_r=64, device="meta")


@pytest.fixture(scope="module")
def deit3_sl() -> SNNet:
    return SNNet.from_timm([DEIT3["s"], DEIT3["l"]], rule="snnetv2", lora_r=64, device="meta")


@pytest.fixture(scope="module")
def tiny() -> SNNet:
    torch.manual_seed(0)
    anchors, kwargs = TINY_V2
    return SNNet.from_timm(anchors, rule="snnetv2", lora_r=4, **kwargs)


# -- 1. two-way stitching: counts and positions equal the official enumeration -----------------------


@pytest.mark.parametrize("depths", [(12, 12), (12, 24)], ids=["S-B", "S-L"])
def test_space_matches_official_enumeration(depths):
    layouts = [AnchorLayout((d,), (w,), (0,), (0,)) for d, w in zip(depths, (384, 1024))]
    space = build_snnetv2_space(layouts)
    official = [c for c in REF["enumeration"][f"{depths[0]}_{depths[1]}"] if c["in_all_cfgs"]]
    assert len(space.configs) == len(official) == 134
    assert Counter(c.variant or "anchor" for c in space.configs) == Counter(
        {"anchor": 2, "SL": 11, "LS": 11, "LSL": 55, "SLS": 55}
    )
    for cfg, ref in zip(space.configs, official):
        assert official_v2_id(cfg.id, depths[0]) == ref["id"]
        if cfg.is_anchor:
            assert [cfg.anchors[0]] == ref["comb_id"]
            continue
        assert cfg.variant == ref["variant"]
        assert _official_view(cfg, space.layers, (0, 1)) == _expected(ref), cfg.name
    # one layer per direction and boundary, each least-squares initialised from its one-way position
    assert Counter((s.front, s.back) for s in space.layers) == {(0, 1): 11, (1, 0): 11}
    assert all(len(s.positions) == 1 for s in space.layers)


def test_deit3_s_b_l_pairs_each_get_the_official_space(deit3_sbl):
    m = deit3_sbl
    assert len(m.configs) == 3 + 2 * 132 and len(m.stitch_layers) == 2 * 22
    for pair, depths in (((0, 1), "12_12"), ((1, 2), "12_24")):
        ours = [c for c in m.configs if not c.is_anchor and set(c.anchors) == set(pair)]
        official = [c for c in REF["enumeration"][depths] if c["in_all_cfgs"] and c["variant"] != "anchor"]
        assert [_official_view(c, m.layer_specs, pair) for c in ours] == [_expected(r) for r in official]
    for c in m.configs[3:]:  # every stitch costs between its two anchors
        lo, hi = sorted(m.cost(a).gmacs for a in set(c.anchors))
        assert lo < m.cost(c.id).gmacs < hi


def test_cli_lists_the_v2_space():
    from snnet_ray.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["stitches", "--anchors", f"{DEIT3['s']},{DEIT3['l']}", "--rule", "snnetv2", "--json"])
    assert code == 0
    listing = json.loads(out.getvalue())
    assert listing["rule"] == "snnetv2" and listing["num_configs"] == 134 and listing["num_stitch_layers"] == 22
    sls = [c for c in listing["configs"] if c.get("variant") == "SLS"]
    assert len(sls) == 55 and sls[0]["anchors"] == [0, 1, 0] and len(sls[0]["positions"]) == 2


def test_v2_rule_refuses_what_it_cannot_build():
    from tiny_families import TINY_SWIN

    with pytest.raises(ValueError, match="plain ViTs"):
        SNNet.from_timm(TINY_SWIN[0], rule="snnetv2", device="meta", **TINY_SWIN[1])
    with pytest.raises(ValueError, match="takes no window"):
        SNNet.from_timm(TINY_V2[0], rule="snnetv2", kernel_size=3, device="meta", **TINY_V2[1])
    with pytest.raises(ValueError, match="unknown stitch rule 'v3'"):
        SNNet.from_timm(TINY_V2[0], rule="v3", device="meta", **TINY_V2[1])


def test_round_trips_run_their_route(tiny):
    from snnet_ray.eval.one_pass import evaluate_batch, evaluate_batch_by_config

    m = tiny.eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    sls = next(c for c in m.configs if getattr(c, "variant", "") == "SLS")
    (j1, l1), (j2, l2) = sls.positions
    s, big = m.anchors[0], m.anchors[1]
    h = m.stitch_layers[sls.layers[0]](s.forward_until(x, 0, j1))
    h = m.stitch_layers[sls.layers[1]](big.run_stage(0, h, l1, j2 + 1))
    with torch.no_grad():
        assert torch.allclose(m.forward_config(x, sls.id), s.forward_from(h, 0, l2))
        # one pass (LS stitches and round trips run by forward_stitched after the walks) == config by config
        by_config = evaluate_batch_by_config(m, x, y)
        for max_streams in (3, 16):
            one_pass = evaluate_batch(m, x, y, max_streams=max_streams)
            assert one_pass.keys() == by_config.keys()
            for i, want in by_config.items():
                got = one_pass[i]
                assert (got.samples, got.top1_correct, got.top5_correct) == (
                    want.samples, want.top1_correct, want.top5_correct
                ), i
                assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-4), i
    mods = m.config_modules(sls.id)
    assert sum(isinstance(mod, LinearStitch) for mod in mods) == 2


# -- 2. LoRA stitching layers -----------------------------------------------------------------------


def test_lora_layers_start_at_least_squares_and_train_low_rank(tiny):
    from snnet_ray.stitching.least_squares import least_squares_init
    from snnet_ray.train.optim import OptimConfig, build_optimizer, param_groups

    m = tiny.train()
    least_squares_init(m, torch.randn(8, 3, 32, 32))
    layer = m.stitch_layers[0]
    assert isinstance(layer, LoRAStitch) and layer.lora_r == 4 and layer.scaling == pytest.approx(1 / 4)
    assert not layer.weight.requires_grad and layer.bias.requires_grad and layer.lora_a.requires_grad
    x = torch.randn(2, 17, layer.in_features)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))  # B = 0 at the start

    groups = {g["name"]: g for g in param_groups(m, OptimConfig(lr=1e-3, lora_lr_scale=10, stitch_lr_scale=2))}
    assert groups["lora"]["lr"] == pytest.approx(1e-2) and groups["stitch_layers_no_decay"]["lr"] == pytest.approx(2e-3)
    assert not any(p is layer.weight for g in groups.values() for p in g["params"])  # the frozen base
    assert {id(p) for p in groups["lora"]["params"]} >= {id(layer.lora_a), id(layer.lora_b)}

    opt = build_optimizer(m, OptimConfig(name="lamb", lr=1e-2))
    w0, b0 = layer.weight.detach().clone(), layer.lora_b.detach().clone()
    cfg = next(c for c in m.configs if not c.is_anchor and c.layer == 0)
    m.forward_config(torch.randn(4, 3, 32, 32), cfg.id).square().mean().backward()
    opt.step()
    assert torch.equal(layer.weight, w0) and not torch.equal(layer.lora_b, b0)


def test_lora_is_counted_in_costs_and_folds_exactly(tiny, tmp_path):
    from snnet_ray.deploy.export import export_config, load_exported
    from snnet_ray.stitching.saving import load_snnet, save_snnet

    m = tiny.eval()
    for layer in m.stitch_layers:
        nn.init.normal_(layer.lora_b, std=0.5)  # a trained update, so folding has work to do
    sl = next(c for c in m.configs if getattr(c, "variant", "") == "SL")
    spec, tokens = m.layer_specs[sl.layer], 1 + (32 // 8) ** 2
    extra = 4 * (spec.in_width + spec.out_width)
    assert m.cost(sl.id).params - m.cost(sl.id, folded=True).params == extra
    assert m.cost(sl.id).gmacs - m.cost(sl.id, folded=True).gmacs == pytest.approx(tokens * extra / 1e9)

    x = torch.randn(3, 3, 32, 32)
    lsl = next(c for c in m.configs if getattr(c, "variant", "") == "LSL")
    for cfg in (sl, lsl):
        out = export_config(m, cfg.id, tmp_path / f"cfg{cfg.id}", formats=("safetensors",))
        net = load_exported(out.out_dir)
        assert not any("lora" in k for k in net.state_dict())
        assert net.num_params() == m.cost(cfg.id, folded=True).params == out.params
        with torch.no_grad():
            assert torch.allclose(net(x), m.forward_config(x, cfg.id), atol=1e-5)

    save_snnet(m, tmp_path / "lora")
    again = load_snnet(tmp_path / "lora").eval()
    with torch.no_grad():
        before = {c.id: m.forward_config(x, c.id) for c in (sl, lsl)}
        assert all(torch.allclose(again.forward_config(x, i), y) for i, y in before.items())
        assert again.fold_lora() == len(again.stitch_layers)
        assert not any(isinstance(layer, LoRAStitch) for layer in again.stitch_layers)
        assert all(torch.allclose(again.forward_config(x, i), y, atol=1e-5) for i, y in before.items())
    assert again.cost(lsl.id) == m.cost(lsl.id, folded=True)
    save_snnet(again, tmp_path / "folded")
    assert load_snnet(tmp_path / "folded", device="meta").lora_r == 0


# -- 3. resource-constrained sampling ---------------------------------------------------------------


def test_resource_constrained_groups_equal_the_official_ones(deit3_sl):
    from snnet_ray.train.samplers import OFFICIAL_FLOPS_GAP, build_sampler

    costs = {official_v2_id(c.id): deit3_sl.cost(c.id).gmacs for c in deit3_sl.configs}
    sampler = build_sampler("resource_constrained", costs, flops_gap=OFFICIAL_FLOPS_GAP)
    assert REF["flops_gap"] == OFFICIAL_FLOPS_GAP
    assert sampler.group_ids() == REF["flops_groups"]["deit3_s_l_v2"]

    v1 = SNNet.from_timm(["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"], device="meta")
    v1_sampler = build_sampler("resource_constrained", [v1.cost(c.id).gmacs for c in v1.configs])
    assert v1_sampler.group_ids() == REF["flops_groups"]["deit_ti_s_b_v1"]
    assert len(v1_sampler.groups) == 16


def test_resource_constrained_draws_a_group_uniformly_then_a_config():
    from snnet_ray.train.samplers import SamplerConfig, build_sampler, list_samplers

    assert {"resource_constrained", "flops_bucket", "uniform"} <= set(list_samplers())
    costs = [1.0] * 8 + [5.0, 9.0]  # eight cheap configs in one group, two alone
    sampler = SamplerConfig(name="resource_constrained", flops_gap=1.0, seed=3).build(costs, world_size=4, rank=1)
    assert [len(g) for g in sampler.groups] == [8, 1, 1]
    steps = 3000
    draws = Counter(sampler.sample(s) for s in range(steps))
    for expensive in (8, 9):
        assert abs(draws[expensive] / steps - 1 / 3) < 0.03
    assert all(abs(draws[i] / steps - 1 / 24) < 0.015 for i in range(8))
    again = build_sampler("resource_constrained", costs, world_size=4, rank=1, seed=3, flops_gap=1.0)
    assert [again.sample(s) for s in range(50)] == [sampler.assignment(s)[1] for s in range(50)]
    with pytest.raises(ValueError, match="flops_gap must be a finite number of GMACs"):
        SamplerConfig(name="resource_constrained", flops_gap=-1)


# -- 4. DeiT III presets: the official recipe's numbers ------------------------------------------------


@pytest.mark.parametrize("keys", ["sbl", "sb", "sl", "bl"])
def test_deit3_presets_carry_the_official_recipe(keys):
    from snnet_ray.train.config import load_experiment

    cfg = load_experiment(f"deit3_{'_'.join(keys)}_imagenet")
    pairs = [a + b for a, b in itertools.pairwise(keys)]
    for pair in pairs:
        off = RECIPES["configs"][f"{pair[0]}_{pair[1]}"]
        drop = {k: d for k, d in zip(pair, off["anchor_drop_path"])}
        for k in pair:
            name, kwargs = cfg.model.anchors[keys.index(k)]
            assert name == DEIT3[k] and kwargs["drop_path_rate"] == drop[k]
        assert off["unscale_lr"] and cfg.schedule.lr_reference_batch is None and cfg.peak_lr == off["lr"]
        assert (cfg.optim.name, off["opt"]) == ("lamb", "fusedlamb")
        assert cfg.optim.warmup_lr == off["warmup_lr"] and cfg.optim.weight_decay == off["weight_decay"]
        assert cfg.optim.min_lr == RECIPES["defaults"]["min_lr"] and cfg.optim.eps == RECIPES["defaults"]["opt_eps"]
        assert (cfg.schedule.epochs, cfg.schedule.warmup_epochs) == (off["epochs"], off["warmup_epochs"])
        assert cfg.data.batch_size == off["batch_size"] and cfg.scaling.num_workers == RECIPES["defaults"]["gpus"]
        assert cfg.data.input_size == off["input_size"] and cfg.data.crop_pct == off["eval_crop_ratio"]
        assert (cfg.data.mixup_alpha, cfg.data.cutmix_alpha) == (off["mixup"], off["cutmix"])
        assert cfg.data.label_smoothing == off["smoothing"] and cfg.data.re_prob == off["reprob"]
        assert cfg.data.color_jitter == off["color_jitter"] and cfg.seed == off["seed"]
        assert (cfg.data.three_augment, cfg.data.simple_random_crop) == (off["ThreeAugment"], off["src"])
        assert cfg.model.drop_path_schedule == "uniform"  # official DeiT III: dpr = [drop_path_rate] * depth
        assert cfg.data.auto_augment is None
        assert (cfg.model.rule, cfg.model.lora_r, cfg.model.lora_alpha) == ("snnetv2", off["lora_r"], 1.0)
    assert cfg.sampler.name == "resource_constrained" and cfg.sampler.flops_gap == RECIPES["defaults"]["flops_gap"]
    assert cfg.loss.teacher is None  # the official v2 recipe does not distil
    if keys != "sbl":  # the pairs' spaces are checked above; build the three-anchor one from its preset
        return
    m = cfg.model
    model = SNNet.from_timm(
        m.anchors, rule=m.rule, lora_r=m.lora_r, lora_alpha=m.lora_alpha, device="meta", **m.timm_kwargs
    )
    assert len(model.configs) == 3 + 132 + 132
    sampler = cfg.sampler.build([model.cost(c.id).gmacs for c in model.configs])
    assert sampler.name == "resource_constrained"


# -- 5. published v2 results -----------------------------------------------------------------------------


def test_published_v2_results_line_up_with_the_v2_space(deit3_sl):
    from snnet_ray.results.published_v2 import PUBLISHED_V2, list_published_v2, load_published_v2

    assert list_published_v2() == ["deit3_s_l"] and PUBLISHED_V2["deit3_s_l"]["anchors"] == deit3_sl.anchor_names
    rows = load_published_v2("deit3_s_l")
    assert len(rows) == 134 and [r.config_id for r in rows] == list(range(134))
    assert (rows[0].top1, rows[1].top1) == (82.906, 86.978)  # DeiT3-S and DeiT3-L after SN-Netv2 training
    assert [r.name for r in rows] == [c.name for c in deit3_sl.configs]
    assert [r.official_id for r in rows] == [official_v2_id(c.id) for c in deit3_sl.configs]
    for r in rows:  # official fvcore FLOPs count LayerNorms as well: within 1% of our folded GMACs
        assert math.isclose(r.gmacs, deit3_sl.cost(r.config_id, folded=True).gmacs, rel_tol=0.01), r
    assert max(r.top1 for r in rows if r.variant == "SLS") > rows[0].top1  # round trips beat DeiT3-S
    with pytest.raises(ValueError, match="available: deit3_s_l"):
        load_published_v2("deit3_ti_s")


def test_published_v2_release_compares_a_run(deit3_sl, tmp_path, capsys):
    """The v2 results are a release like v1's: `results compare --published snnetv2_deit3_s_l`."""
    from snnet_ray.cli import main
    from snnet_ray.reference import list_published, load_published
    from snnet_ray.results import ConfigInfo, EvalRecord, LocalResults
    from snnet_ray.results.published import compare_published

    assert "snnetv2_deit3_s_l" in list_published()
    pub = load_published("snnetv2_deit3_s_l")
    assert pub.space["rule"] == "snnetv2" and pub.configs[30].variant == "LSL"
    v1 = SNNet.from_timm([DEIT3["s"], DEIT3["l"]], device="meta")  # rule paper: a different layout
    db = tmp_path / "r.db"
    with LocalResults(db) as results:
        for run, model in (("v2", deit3_sl), ("v1", v1)):
            results.put_configs(run, [
                ConfigInfo(config_id=c.id, name=c.name, kind=c.kind, anchors=list(c.anchors),
                           gmacs=model.cost(c.id, folded=True).gmacs)
                for c in model.configs
            ])  # fmt: skip
            results.ingest([
                EvalRecord(run=run, checkpoint="final", config_id=c.id, shard="val-0", samples=1000,
                           top1_correct=round(pub.configs[min(c.id, 133)].acc1 * 10) - 5, top5_correct=1000)
                for c in model.configs
            ])  # fmt: skip
        with pytest.raises(ValueError, match="does not have the published snnetv2_deit3_s_l layout.*rule=snnetv2"):
            compare_published(results.table("v1"), "snnetv2_deit3_s_l")
    args = ["results", "compare", "--db", str(db), "--run", "v2", "--published", "snnetv2_deit3_s_l", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_a"] == "published:snnetv2_deit3_s_l" and len(out["rows"]) == 134
    assert all(r["delta"] == pytest.approx(-0.5, abs=0.06) for r in out["rows"])


# -- 6. flexible backbone: every config's feature map --------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "swin", "resnet"])
def test_every_config_exposes_its_feature_map(family):
    from tiny_families import FAMILIES

    anchors, kwargs = FAMILIES[family]
    m = SNNet.from_timm(anchors, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a in range(len(m.anchors)):  # timm's convention: an anchor's own forward_features
            assert torch.allclose(m.forward_features(x, a), m.anchors[a].model.forward_features(x), atol=1e-5)
        stitches = [c for c in m.configs if not c.is_anchor]
        for cfg in (*m.configs[: len(m.anchors)], stitches[0], stitches[len(stitches) // 2], stitches[-1]):
            fmap = m.forward_feature_map(x, cfg.id)
            assert fmap.ndim == 4 and fmap.shape[:2] == (2, m.feature_width(cfg.id))
            assert torch.allclose(m.anchors[cfg.anchors[-1]].model.forward_head(m.forward_features(x, cfg.id)),
                                  m.forward_config(x, cfg.id), atol=1e-5)  # fmt: skip


def test_snnet_trains_as_a_dense_prediction_backbone(tiny):
    """A tiny segmentation head (one 1x1 conv per feature width) trains through two configs."""
    m = tiny.train()
    widths = sorted({m.feature_width(c.id) for c in m.configs})
    head = nn.ModuleDict({str(w): nn.Conv2d(w, 5, 1) for w in widths})
    params = [p for p in (*m.parameters(), *head.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    x, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    sls = next(c for c in m.configs if getattr(c, "variant", "") == "SLS")  # ends in the small anchor
    lsl = next(c for c in m.configs if getattr(c, "variant", "") == "LSL")  # ends in the large one
    for cfg in (sls, lsl):
        watched = [m.stitch_layers[i].lora_b for i in cfg.layers] + [head[str(m.feature_width(cfg.id))].weight]
        before = [p.detach().clone() for p in watched]
        opt.zero_grad()
        fmap = m.forward_feature_map(x, cfg.id)
        assert fmap.shape == (2, m.feature_width(cfg.id), 4, 4)
        logits = nn.functional.interpolate(head[str(fmap.shape[1])](fmap), size=(32, 32), mode="bilinear")
        loss = nn.functional.cross_entropy(logits, masks)
        loss.backward()
        opt.step()
        assert math.isfinite(loss.item())
        assert all(not torch.equal(p, b) for p, b in zip(watched, before))
