"""Single-process pieces of the harness: ordered gradients and per-rank training state files."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from tiny_families import tiny_snnet

from snnet_ray.train.checkpoint import RandomState, TrainProgress, load_states, save_states
from snnet_ray.train.engine import OrderedGradients, needs_ordered_gradients, unwrap
from snnet_ray.train.samplers import build_sampler


@pytest.fixture(scope="module")
def snnet():
    return tiny_snnet("vit")


def test_ordered_gradients_match_plain_ones_and_zero_the_unused(snnet):
    x = torch.randn(2, 3, 32, 32)
    cfg = next(c for c in snnet.configs if not c.is_anchor)
    snnet.select(cfg.id)
    snnet.zero_grad(set_to_none=True)
    snnet(x).square().mean().backward()
    plain = {n: p.grad for n, p in snnet.named_parameters()}
    snnet.zero_grad(set_to_none=True)

    wrapped = OrderedGradients(snnet)
    wrapped(x).square().mean().backward()
    for name, p in snnet.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"  # ZeRO-1/2 need one on every rank
        if plain[name] is None:
            assert not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, plain[name])
    assert unwrap(wrapped) is snnet
    assert wrapped.state_dict().keys() == snnet.state_dict().keys()  # checkpoints load into the bare SNNet
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
