"""Single-process pieces of the harness: the global gradient release order and per-rank state files."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from tiny_families import tiny_snnet

from snnet_ray.train.checkpoint import RandomState, TrainProgress, load_states, save_states
from snnet_ray.train.engine import GlobalOrderGradients, needs_ordered_gradients, release_order, select, unwrap
from snnet_ray.train.samplers import build_sampler


@pytest.fixture(scope="module")
def snnet():
    return tiny_snnet("vit")


def _backward_with_hooks(model, wrapped, x):
    """Backward through `wrapped`; returns (names in the order their gradient hooks fired,
    how many had fired when the input's gradient was computed)."""
    fired: list[str] = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda _p, n=n: fired.append(n)) for n, p in model.named_parameters()
    ]
    at_input: list[int] = []
    x = x.clone().requires_grad_(True)
    x.register_hook(lambda g: at_input.append(len(fired)))
    try:
        wrapped(x).square().mean().backward()
    finally:
        for h in handles:
            h.remove()
    return fired, at_input[0]


def test_global_order_gradients_match_plain_ones_and_fire_alike_on_every_path(snnet):
    x = torch.randn(2, 3, 32, 32)
    stitches = [c.id for c in snnet.configs if not c.is_anchor]
    a, b = stitches[0], stitches[-1]  # Ti->S and S->B: different anchors, blocks and layers
    every_rank = [a, b]
    wrapped = GlobalOrderGradients(snnet)
    chained = set(wrapped.chained_names(every_rank))
    orders = []
    for cfg in every_rank:
        snnet.select(cfg)
        snnet.zero_grad(set_to_none=True)
        snnet(x).square().mean().backward()
        plain = {n: p.grad for n, p in snnet.named_parameters()}
        snnet.zero_grad(set_to_none=True)

        select(wrapped, cfg, every_rank)
        fired, before_input = _backward_with_hooks(snnet, wrapped, x)
        orders.append(fired)
        for name, p in snnet.named_parameters():
            if name not in chained:  # on no rank's path: no gradient on any rank
                assert p.grad is None and plain[name] is None, name
            elif plain[name] is None:
                assert p.grad is not None and not p.grad.any(), name  # zeros, as ZeRO-1/2 need
            else:
                torch.testing.assert_close(p.grad, plain[name])
        # released during the backward pass, not after it: the head's buckets can reduce while
        # the front anchor's blocks still run backward
        assert before_input > len(fired) // 3, (before_input, len(fired))
    # the same parameters, in the same order, whichever path this rank ran
    assert orders[0] == orders[1] == wrapped.chained_names(every_rank)
    assert unwrap(wrapped) is snnet
    assert wrapped.state_dict().keys() == snnet.state_dict().keys()  # checkpoints load into the bare SNNet
    snnet.zero_grad(set_to_none=True)


def test_without_a_plan_every_parameter_is_released_in_the_global_order(snnet):
    wrapped = GlobalOrderGradients(snnet)
    order = release_order(snnet)
    assert sorted(order) == sorted(n for n, p in snnet.named_parameters() if p.requires_grad)
    # the output side first: a head before any block, the front anchor's embedding last of its anchor
    assert order.index("anchors.2.model.head.weight") < order.index("anchors.2.model.blocks.0.attn.qkv.weight")
    embed = order.index("anchors.0.model.patch_embed.proj.weight")
    assert order.index("anchors.0.model.blocks.0.attn.qkv.weight") < embed
    select(wrapped, snnet.configs[0].id)
    fired, _ = _backward_with_hooks(snnet, wrapped, torch.randn(2, 3, 32, 32))
    assert fired == order
    snnet.zero_grad(set_to_none=True)


def test_only_zero_1_and_2_with_per_rank_configs_need_ordering():
    assert [needs_ordered_gradients(stage, False) for stage in range(4)] == [False, True, True, False]
    assert not any(needs_ordered_gradients(stage, True) for stage in range(4))


def test_states_round_trip_as_json_and_tensors(tmp_path):
    progress = TrainProgress(step=7, micro_step=14, epoch=1, samples=448)
    sampler = build_sampler("balanced", [1.0, 1.02, 2.0], world_size=2, rank=0, seed=3)
    for step in range(14):
        sampler.sample(step)
    random.seed(5)
    torch.manual_seed(5)
    save_states(tmp_path, {"progress": progress, "sampler": sampler, "rng": RandomState()})
    expected_draws = (random.random(), torch.rand(3))
    # nothing to unpickle: the shared state is JSON, the rank's generators tensors and plain data
    assert json.loads((tmp_path / "train_state" / "state.json").read_text())["states"]["progress"]["step"] == 7
    torch.load(tmp_path / "train_state" / "rank_0.pt", weights_only=True)

    restored = TrainProgress()
    restored_sampler = build_sampler("balanced", [1.0, 1.02, 2.0], world_size=2, rank=0, seed=3)
    load_states(tmp_path, {"progress": restored, "sampler": restored_sampler, "rng": RandomState()})
    assert restored == progress
    assert restored_sampler.counts == sampler.counts
    assert random.random() == expected_draws[0]
    torch.testing.assert_close(torch.rand(3), expected_draws[1])
    # another rank of a resized job starts with no counts of its own: the job's total stays the same
    other = build_sampler("balanced", [1.0, 1.02, 2.0], world_size=3, rank=1, seed=3)
    other.load_state_dict(sampler.state_dict())
    assert other.counts == [0, 0, 0]

    with pytest.raises(ValueError, match=r"no state for \['data'\]"):
        load_states(tmp_path, {"data": TrainProgress()})


def test_checkpoint_index_is_read_without_unpickling_arbitrary_objects(tmp_path):
    import os
    import pickle

    from snnet_ray.train.checkpoint import _MetadataUnpickler

    hostile = pickle.dumps(os.system)  # what a tampered `.metadata` could hold
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        _MetadataUnpickler(io.BytesIO(hostile)).load()
    # DCP's own module imports `os`: protocol 4 resolves a dotted name through it, so only exact names pass
    through_dcp = b"\x80\x04ctorch.distributed.checkpoint.metadata\nos.getcwd\n)R."
    with pytest.raises(pickle.UnpicklingError, match="metadata.os.getcwd"):
        _MetadataUnpickler(io.BytesIO(through_dcp)).load()
    walk = b"\x80\x04cbuiltins\ngetattr\n."  # getattr reaches any global from an allowed class
    with pytest.raises(pickle.UnpicklingError, match="builtins.getattr"):
        _MetadataUnpickler(io.BytesIO(walk)).load()
