"""Configs as hostile input: every bad value refused at load naming its field, and a dry run
(`train --validate`, `sweep --validate`) that lists every problem without starting a worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_families import TINY_RESNET, TINY_VIT

from snnet_ray.cli import main as cli_main
from snnet_ray.data import write_digits_shards
from snnet_ray.names import check_name, is_name
from snnet_ray.stitching import SNNet
from snnet_ray.train.config import load_experiment
from snnet_ray.train.preflight import preflight
from snnet_ray.tune.config import load_sweep


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits_shards(root)
    return root


@pytest.mark.parametrize("override, field", [
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=inf", "optim.lr"),
    ("optim.lr=-.inf", "optim.lr"),
    ("deepspeed.gradient_clipping=nan", "deepspeed.gradient_clipping"),
    ("schedule.epochs=inf", "schedule.epochs"),
    ("model.timm_kwargs.drop_path_rate=.nan", "model.timm_kwargs.drop_path_rate"),
    ("data.mean=[0.5, .inf, 0.5]", r"data.mean\[1\]"),
    ("scaling.num_workers=true", "scaling.num_workers"),
    ("schedule.max_steps=18014398509481984", "schedule.max_steps"),
    ("eval.configs=[0, true]", "eval.configs"),
    ("eval.configs=[-1]", "eval.configs"),
    ("run.name=../../etc", "run.name"),
    ("run.name=a b", "run.name"),
    ("run.name=-rf", "run.name"),
])
def test_bad_values_are_refused_at_load_with_the_field_named(override, field):
    with pytest.raises(ValueError, match=field):
        load_experiment("tiny_digits", ["data.root=/tmp", override])


def test_sweep_bounds_must_be_finite():
    with pytest.raises(ValueError, match=r"space.optim.lr.loguniform\[0\]"):
        load_sweep("tiny_digits", ["space.optim.lr={loguniform: [.nan, 1]}"])
    with pytest.raises(ValueError, match="scheduler.reduction_factor"):
        load_sweep("tiny_digits", ["scheduler.reduction_factor=.inf"])


def test_the_name_rule():
    for good in ("tiny-digits", "step-000200", "val-000003.tar", "sweep-1a2b_00001", "lr=1e-4,bs=64", "h200-bf16"):
        assert is_name(good), good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "a b", "-rf", ".hidden", "x\n", "\x1b[2J", "a" * 129, "é"):
        assert not is_name(bad), bad
    with pytest.raises(ValueError, match="run '../x' is not a valid name"):
        check_name("../x", "run")
    # sweeps and their trials' runs follow the same rule (a sweep name names folders)
    with pytest.raises(ValueError, match="sweep name '../up' is not a valid name"):
        load_sweep("tiny_digits", ["name=../up"])
    from snnet_ray.tune.trial import trial_run_name

    assert trial_run_name("tiny", "a1b2c_00003") == "tiny-a1b2c_00003"
    with pytest.raises(ValueError, match="trial run name"):
        trial_run_name("tiny", "x/../../y")


@pytest.mark.parametrize("families", [(TINY_VIT, TINY_RESNET), (TINY_RESNET, TINY_VIT)])
def test_mixed_families_are_reported_as_such_even_with_family_specific_kwargs(families):
    (first, kwargs), (second, _) = families
    with pytest.raises(ValueError, match="anchors must be of one family"):
        SNNet.from_timm([first[0], second[0]], device="meta", **kwargs)  # ViT kwargs break ResNet's constructor


def test_preflight_lists_every_problem(digits, tmp_path):
    missing = tmp_path / "missing.safetensors"
    cfg = load_experiment("tiny_digits", [f"data.root={tmp_path / 'nowhere'}", "eval.configs=[0, 5000]",
                                          "loss.teacher=resnet18", f"loss.teacher_weights={missing}"])
    report = preflight(cfg)
    checks = [p.check for p in report.problems]
    assert checks == ["data", "eval.configs", "loss"], report.format()
    assert "outside this model's stitch space of 33 configs" in report.format()
    cfg = load_experiment("tiny_digits", [f"data.root={digits}", f"model.pretrained=[{missing}, false, false]"])
    report = preflight(cfg)
    assert [p.check for p in report.problems] == ["model"] and "weights file for anchor" in report.format()
    assert any("classes" in s for s in report.skipped)
    assert preflight(load_experiment("tiny_digits", [f"data.root={digits}"])).ok


def test_train_validate_exits_nonzero_with_the_problems_and_starts_nothing(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["train", "--config", "tiny_digits", "--validate"]
    assert cli_main([*args, "--set", f"data.root={digits}"]) == 0
    out = capsys.readouterr().out
    assert "every check passed" in out and "capacity not checked" in out
    code = cli_main([*args, "--set", f"data.root={tmp_path / 'nowhere'}", "--set", "eval.configs=[0,5000]",
                     "--set", "model.timm_kwargs.num_classes=7"])
    out = capsys.readouterr().out
    assert code == 1
    assert "2 problem(s)" in out and "data: data.root=" in out and "eval.configs lists [5000]" in out
    assert cli_main([*args, "--set", "optim.lr=nan"]) == 1
    assert "config field 'optim.lr' must be a finite number" in capsys.readouterr().out
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_sweep_validate_checks_every_distinct_point(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = cli_main(["sweep", "--config", "tiny_digits", "--validate", "--set", f"data.root={tmp_path / 'nowhere'}",
                     "--set", "experiment.eval.configs=[0,20]"])
    out = capsys.readouterr().out
    assert code == 1
    assert "no _info.json" in out and "and 3 more" in out  # one message for the 4 distinct model/data points
    # id 20 exists only with three anchors and kernel 2 (33 configs): the three other points name it
    assert out.count("eval.configs lists [20]") == 3


@pytest.mark.slow
def test_validate_checks_the_capacity_of_a_reachable_cluster(digits, capsys):
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        code = cli_main(["train", "--config", "tiny_digits", "--validate", "--set", f"data.root={digits}"])
        out = capsys.readouterr().out
    finally:
        ray.shutdown()
    assert code == 1 and "needs 2 CPUs but the cluster has 1" in out
