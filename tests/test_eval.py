"""One-pass evaluation equals config-by-config; distributed evaluation equals one process."""

from __future__ import annotations

import json

import pytest
import ray
import torch
from tiny_families import FAMILIES, tiny_snnet

from snnet_ray.data import DataConfig, build_val_loader, write_digits_shards
from snnet_ray.eval import (
    EvalRequest,
    evaluate_batch,
    evaluate_batch_by_config,
    evaluate_distributed,
    evaluate_shards,
    total_counts,
)
from snnet_ray.results import LocalResults
from snnet_ray.stitching import least_squares_init, save_snnet


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_pass_equals_config_by_config(family):
    model = tiny_snnet(family).eval()
    least_squares_init(model, torch.randn(8, 3, 32, 32))
    images, labels = torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,))
    subset = [0, 3, len(model.configs) - 1]
    # max_streams=3: stitches into one back anchor walk in several groups (bounded memory)
    for ids, max_streams in ((None, 3), (subset, 16)):
        _assert_same_counts(
            evaluate_batch(model, images, labels, ids, max_streams=max_streams),
            evaluate_batch_by_config(model, images, labels, ids),
        )


def _assert_same_counts(one_pass, by_config):
    assert one_pass.keys() == by_config.keys()
    for cfg_id, expected in by_config.items():
        got = one_pass[cfg_id]
        assert (got.samples, got.top1_correct, got.top5_correct) == (
            expected.samples, expected.top1_correct, expected.top5_correct
        ), cfg_id
        assert got.loss_sum == pytest.approx(expected.loss_sum, rel=1e-4), cfg_id


def test_one_pass_walks_each_anchor_once():
    """DeiT-like family: one call per block of each anchor, whatever the number of stitches."""
    model = tiny_snnet("vit").eval()
    calls = []
    for anchor in model.anchors:
        for _, _, blk in anchor.blocks():
            blk.register_forward_hook(lambda *_: calls.append(1))
    evaluate_batch(model, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert len(calls) == sum(sum(a.stage_depths) for a in model.anchors)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_shards(root, shard_size=64)
    return root


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits):
    model = tiny_snnet("vit").eval()
    least_squares_init(model, torch.randn(8, 3, 32, 32))
    return save_snnet(model, tmp_path_factory.mktemp("model") / "snnet"), model


def _data_cfg(root, model) -> DataConfig:
    return DataConfig.from_timm(str(root), model.data_config, val_batch_size=50, num_workers=0)


def test_per_shard_counts_sum_to_the_whole_split(digits, saved_model):
    _, model = saved_model
    loader = build_val_loader(_data_cfg(digits, model), rank=0, world_size=1)
    shards = list(evaluate_shards(model, loader))
    assert [s.shard for s in shards] == loader.shards and len(shards) == 6
    totals = total_counts(shards)
    assert all(c.samples == 360 for c in totals.values())
    # the same images evaluated as one batch per shard, config by config
    reference = {}
    for batch in build_val_loader(_data_cfg(digits, model).replace(val_batch_size=1000), rank=0, world_size=1):
        for cfg_id, c in evaluate_batch_by_config(model, batch.images, batch.targets).items():
            reference.setdefault(cfg_id, type(c)()).add(c)
    for cfg_id, c in totals.items():
        ref = reference[cfg_id]
        assert (c.samples, c.top1_correct, c.top5_correct) == (ref.samples, ref.top1_correct, ref.top5_correct)
        assert c.loss_sum == pytest.approx(ref.loss_sum, rel=1e-4)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_distributed_evaluation_equals_one_process_and_resumes(tmp_path, digits, saved_model, ray_cluster):
    model_dir, model = saved_model
    db = f"sqlite:///{tmp_path / 'results.db'}"
    single = total_counts(evaluate_shards(model, build_val_loader(_data_cfg(digits, model), rank=0, world_size=1)))

    # a first, partial evaluation (2 shards), then the full one resumes and only adds the rest
    request = EvalRequest(str(model_dir), str(digits), run="eval-test", results=db, num_workers=2, batch_size=50)
    request.loader_workers = 0
    evaluate_distributed(EvalRequest(**{**request.__dict__, "max_shards": 2}), progress=False)
    results = LocalResults(db)
    assert set(results.done_shards("eval-test", "final")) == {"validation-000000.tar", "validation-000001.tar"}
    first_records = {(r.shard, r.config_id): r.time for r in results.records("eval-test", "final")}

    table = evaluate_distributed(request, progress=False)
    assert len(results.done_shards("eval-test", "final")) == 6
    records = results.records("eval-test", "final")
    assert len(records) == 6 * len(model.configs)
    # shards recorded by the first call were skipped, not evaluated again
    kept = [r for r in records if (r.shard, r.config_id) in first_records]
    assert all(first_records[(r.shard, r.config_id)] == r.time for r in kept)
    # two workers' partial counts sum to exactly the single-process counts
    rows = {row.config_id: row for row in table.rows}
    assert len(rows) == len(model.configs)
    for cfg_id, c in single.items():
        assert rows[cfg_id].samples == c.samples == 360
        assert rows[cfg_id].top1 == pytest.approx(c.top1, abs=1e-9)
        assert rows[cfg_id].top5 == pytest.approx(c.top5, abs=1e-9)
    assert {r.worker.rsplit(":", 1)[1] for r in records} == {"0", "1"}


def test_eval_command_on_a_training_style_checkpoint(tmp_path, digits, saved_model, ray_cluster, capsys):
    from snnet_ray.cli import main

    model_dir, _ = saved_model
    checkpoint = tmp_path / "my-run" / "checkpoint_000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model").symlink_to(model_dir, target_is_directory=True)
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["eval", "--checkpoint", str(checkpoint), "--data", str(digits), "--results", db]
    flags = ["--workers", "1", "--loader-workers", "0", "--configs", "0,1,2,5", "--latency", "4", "--json"]
    assert main([*args, *flags]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["run"] == "my-run" and {r["config_id"] for r in table["rows"] if r["samples"]} == {0, 1, 2, 5}
    assert all(r["samples"] == 360 for r in table["rows"] if r["samples"])
    # latency on the worker's device (CPU here, batch 4), per evaluated config
    measured = [r for r in table["rows"] if r["samples"]]
    assert all(set(r["latency_ms"]) == {"cpu-b4"} and r["latency_ms"]["cpu-b4"] > 0 for r in measured)
    assert main(["eval", "--checkpoint", str(tmp_path), "--data", str(digits), "--results", db]) == 2
    assert "no saved SN-Net" in capsys.readouterr().err
