"""SNNet: running one selected path, exact anchors, state dicts, costs, least-squares init."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_families import FAMILIES, tiny_snnet

from snnet_ray import SNNet, least_squares_init
from snnet_ray.stitching import solve_least_squares
from snnet_ray.stitching.cost import flop_counter


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def model(request):
    torch.manual_seed(0)
    return tiny_snnet(request.param).eval()


def _all_modules(model: SNNet) -> list[torch.nn.Module]:
    return [blk for a in model.anchors for _, _, blk in a.blocks()] + list(model.stitch_layers)


def test_forward_runs_only_the_selected_path(model):
    ran: list[torch.nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: ran.append(m)) for m in _all_modules(model)]
    try:
        x = torch.randn(2, 3, 32, 32)
        for cfg in model.configs:
            ran.clear()
            model.select(cfg.id)
            out = model(x)
            assert out.shape == (2, 10)
            assert [id(m) for m in ran] == [id(m) for m in model.config_modules(cfg.id)], cfg.name
    finally:
        for h in handles:
            h.remove()


def test_anchor_configs_reproduce_the_anchors_exactly(model):
    x = torch.randn(2, 3, 32, 32)
    for i, adapter in enumerate(model.anchors):
        model.select(i)
        assert torch.equal(model(x), adapter.model(x))


def test_backward_reaches_only_the_path(model):
    model.train()
    try:
        cfg = next(c for c in model.configs if not c.is_anchor and c.anchors == (0, 1))
        model.zero_grad(set_to_none=True)
        model.select(cfg.id)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        with_grad = {id(p) for p in model.parameters() if p.grad is not None}
        path = {id(p) for m in model.config_modules(cfg.id) for p in m.parameters()}
        assert path <= with_grad
        other_layers = [layer for i, layer in enumerate(model.stitch_layers) if i != cfg.layer]
        assert all(p.grad is None for layer in other_layers for p in layer.parameters())
        assert all(p.grad is None for p in model.anchors[2].parameters()) if len(model.anchors) > 2 else True
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def test_select_is_cheap_and_checked(model):
    ptrs = [p.data_ptr() for p in model.parameters()]
    for cfg in model.configs:
        assert model.select(cfg.id) is cfg
    assert [p.data_ptr() for p in model.parameters()] == ptrs
    with pytest.raises(ValueError, match="out of range"):
        model.select(len(model.configs))


def test_state_dict_round_trip(model):
    family = model.family
    clone = tiny_snnet(family).eval()
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for cfg in model.configs[:: max(1, len(model.configs) // 6)]:
        assert torch.equal(model.forward_config(x, cfg.id), clone.forward_config(x, cfg.id))
    assert any(k.startswith("stitch_layers.0.") for k in model.state_dict())
    assert any(k.startswith("anchors.0.model.") for k in model.state_dict())


def test_cost_is_the_flop_count_of_the_path(model):
    """Cost sums per-piece counts; it must equal counting the config's whole forward."""
    x = torch.randn(1, *model.input_size)
    for cfg in model.configs:
        with flop_counter() as counter, torch.no_grad():
            model.forward_config(x, cfg.id)
        cost = model.cost(cfg.id)
        assert cost.gmacs * 1e9 == pytest.approx(counter.get_total_flops() / 2, rel=1e-9), cfg.name
        params = {id(p): p.numel() for m in model.config_modules(cfg.id) for p in m.parameters()}
        assert cost.params >= sum(params.values())  # plus embedding, entries and head
    for i, adapter in enumerate(model.anchors):
        assert model.cost(i).params == sum(p.numel() for p in adapter.model.parameters())


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_cost_is_the_same_whether_the_model_is_built_on_cpu_or_meta(family):
    # CPU attention runs a fused kernel torch's FLOP counter has no formula for: it counted zero.
    on_cpu, on_meta = tiny_snnet(family), tiny_snnet(family, device="meta")
    cpu = [on_cpu.cost(c.id).gmacs for c in on_cpu.configs]
    assert cpu == pytest.approx([on_meta.cost(c.id).gmacs for c in on_meta.configs], rel=1e-12)


def test_deit_ti_s_b_anchor_gmacs_match_the_paper():
    model = SNNet.from_timm(["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"], device="meta")
    for i, reference in enumerate([1.26, 4.6, 17.6]):
        assert model.cost(i).gmacs == pytest.approx(reference, rel=0.05)
    stitch = model.cost(40)
    assert model.cost(1).gmacs < stitch.gmacs < model.cost(2).gmacs


def test_solve_least_squares_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 7))
    y = x @ rng.normal(size=(7, 5)) + rng.normal(size=5) + 0.01 * rng.normal(size=(200, 5))
    w, b = solve_least_squares(torch.from_numpy(x), torch.from_numpy(y))
    ref = np.linalg.lstsq(np.hstack([x, np.ones((200, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(w.numpy(), ref[:-1].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), ref[-1], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_least_squares_stitch_beats_random_init(family):
    torch.manual_seed(0)
    model = tiny_snnet(family).eval()
    images = torch.randn(16, 3, 32, 32)
    spec = model.layer_specs[0]
    j, l = spec.positions[0]
    front, back = model.anchors[spec.front], model.anchors[spec.back]

    def stitch_error() -> float:
        with torch.no_grad():
            h = model.stitch_layers[spec.index](front.forward_until(images, spec.stage, j))
            back_in, back_out = back.stage_features(images, spec.stage)
            target = back_in if l == 0 else back_out[l - 1]
            return float((h - target).norm() / target.norm())

    random_error = stitch_error()
    residuals = least_squares_init(model, images)
    assert set(residuals) == {s.index for s in model.layer_specs}
    assert stitch_error() < 0.9 * random_error
    # deterministic: the same batch gives bit-identical weights (what every rank relies on)
    first = [p.clone() for p in model.stitch_parameters()]
    least_squares_init(model, images)
    assert all(torch.equal(a, b) for a, b in zip(first, model.stitch_parameters()))
    assert not model.training


def test_least_squares_makes_stitches_agree_with_the_back_anchor():
    """After init, a stitched path's logits are closer to the back anchor's than at random."""
    torch.manual_seed(0)
    model = tiny_snnet("vit").eval()
    x = torch.randn(32, 3, 32, 32)
    stitches = [c for c in model.configs if not c.is_anchor]

    def gap() -> float:
        with torch.no_grad():
            return float(
                sum((model.forward_config(x, c.id) - model.forward_config(x, c.anchors[1])).norm() for c in stitches)
            )

    before = gap()
    least_squares_init(model, x)
    assert gap() < before


def test_save_and_load_a_whole_snnet(tmp_path):
    from snnet_ray.stitching import load_snnet, save_snnet

    model = tiny_snnet("swin").eval()
    least_squares_init(model, torch.randn(4, 3, 32, 32))
    save_snnet(model, tmp_path / "snnet", extra={"step": 7})
    loaded = load_snnet(tmp_path / "snnet").eval()
    x = torch.randn(2, 3, 32, 32)
    for cfg in model.configs[::5]:
        assert torch.equal(model.forward_config(x, cfg.id), loaded.forward_config(x, cfg.id))
    with pytest.raises(FileNotFoundError, match="snnet.json"):
        load_snnet(tmp_path / "missing")


@pytest.mark.parametrize("family", ["vit", "swin", "resnet"])
def test_uniform_drop_path_gives_every_block_the_anchor_rate(family):
    # timm ramps stochastic depth from 0 at the first block; the official DeiT III models use one rate
    from timm.layers import DropPath

    from snnet_ray.anchors import uniform_drop_path

    model = tiny_snnet(family, drop_path_rate=0.2)

    def rates(anchor):
        slots = [getattr(m, n) for _, _, blk in anchor.blocks() for m in blk.modules()
                 for n in ("drop_path", "drop_path1", "drop_path2") if hasattr(m, n)]  # fmt: skip
        return [m.drop_prob if isinstance(m, DropPath) else 0.0 for m in slots]

    first = model.anchors[0]
    assert len(set(rates(first))) > 1 and max(rates(first)) == pytest.approx(0.2)  # timm's ramp
    assert uniform_drop_path(first, 0.3) == len(rates(first)) > 0
    assert rates(first) == [0.3] * len(rates(first))
    with pytest.raises(ValueError, match="drop_path_rate must be in"):
        uniform_drop_path(first, 1.5)


def test_the_trainer_builds_uniform_drop_path_when_the_config_asks():
    from timm.layers import DropPath

    from snnet_ray.train.config import load_experiment
    from snnet_ray.train.trainer import _build_model

    cfg = load_experiment("tiny_digits", ["model.drop_path_schedule=uniform", "model.timm_kwargs.drop_path_rate=0.1"])
    model = _build_model(cfg)
    drops = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert len(drops) == 2 * sum(a.stage_depths[s] for a in model.anchors for s in range(a.num_stages))
    assert set(drops) == {0.1}
    with pytest.raises(ValueError, match="model.drop_path_schedule must be 'linear' or 'uniform'"):
        load_experiment("tiny_digits", ["model.drop_path_schedule=cosine"])
