"""Ray Tune sweeps: the search space, the family objective, and a real sweep of tiny_digits trials.

What a user relies on: a sweep file with a typo or a bad value is refused before any trial starts,
naming the key; anchor sets carry their weight files; the objective is the normalised area under
the accuracy-vs-GMACs frontier; a sweep of 4 trials on 2 CPUs runs 2 trials at a time, records
every trial's evaluations and hyperparameters in the results service, stops weak trials (ASHA)
or finishes them, prints its table, and names as best the trial with the highest objective.
"""

from __future__ import annotations

import io
import json
import math
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from snnet_ray.results import ConfigResult
from snnet_ray.tune import (
    ParamSpec,
    check_space,
    frontier_objective,
    load_sweep,
    plan_sweep,
    trial_experiment,
    validation_points,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from snnet_ray.data import write_digits_shards

    root = tmp_path_factory.mktemp("digits")
    write_digits_shards(root)
    return root


def _sweep(**changes):
    data = {
        "name": "t",
        "base": "tiny_digits",
        "anchor_sets": {"ti_s": {"anchors": [0, 1]}, "s_b": {"anchors": [1, 2]}},
        "space": {"anchor_set": {"grid": ["ti_s", "s_b"]}, "optim.lr": {"loguniform": [1e-4, 1e-2]}},
    }
    data.update(changes)
    return load_sweep(data)


# -- search space (no Ray) ----------------------------------------------------------------------


def test_sweep_file_gives_trials_and_tune_domains():
    sweep = load_sweep("tiny_digits", ["num_samples=3", "data.root=/x", "space.optim.lr={uniform: [0.001, 0.002]}"])
    assert sweep.num_trials == 3 * 4  # 2 anchor sets x 2 kernel sizes, three samples each
    assert sweep.experiment["data"]["root"] == "/x"  # experiment fields go to the base experiment
    assert sweep.space["optim.lr"] == ParamSpec("uniform", [0.001, 0.002])
    assert sweep.space["sampler.name"].validation_values() == ["uniform", "balanced"]
    from ray import tune

    domain = sweep.space["anchor_set"].tune_domain()
    assert domain == tune.grid_search(["ti_s", "ti_s_b"])


def test_trial_experiment_layers_base_sweep_and_trial_values():
    sweep = _sweep(
        experiment={"scaling": {"num_workers": 1}, "model": {"pretrained": ["t.pt", "s.pt", "b.pt"]}},
        anchor_sets={
            "s_b": {"anchors": [1, 2]},
            "named": {"anchors": ["deit_tiny_patch16_224", "deit_small_patch16_224"],
                      "pretrained": ["ti.safetensors", "s.safetensors"]},
        },
        space={"anchor_set": {"grid": ["s_b", "named"]}},
    )
    cfg = trial_experiment(sweep, {"anchor_set": "s_b", "optim.lr": 0.002, "model.kernel_size": 1})
    assert [a[0] for a in cfg.model.anchors] == ["swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]
    assert cfg.model.pretrained == ["s.pt", "b.pt"]  # the weight files follow the anchors
    assert (cfg.optim.lr, cfg.model.kernel_size, cfg.scaling.num_workers) == (0.002, 1, 1)
    assert cfg.data.batch_size == 32  # untouched base fields stay
    named = trial_experiment(sweep, {"anchor_set": "named"})
    assert named.model.pretrained == ["ti.safetensors", "s.safetensors"]


def test_validation_points_cover_every_value_and_both_ends_of_ranges():
    sweep = _sweep(space={
        "anchor_set": {"grid": ["ti_s", "s_b"]},
        "sampler.name": {"choice": ["uniform", "balanced", "flops_bucket"]},
        "optim.lr": {"loguniform": [1e-4, 1e-2]},
    })  # fmt: skip
    points = validation_points(sweep)
    assert len(points) == 2 * 3 * 2
    assert {p["optim.lr"] for p in points} == {1e-4, 1e-2}
    assert {p["sampler.name"] for p in points} == {"uniform", "balanced", "flops_bucket"}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"optim.lrr": {"grid": [1e-3]}}, r"unknown sweep parameter 'optim.lrr'.*did you mean 'optim.lr'"),
        ({"optim.learning_rate": {"grid": [1e-3]}}, r"optim has no field 'learning_rate'; fields: (name, )?lr, min_lr"),
        ({"modle.stride": {"grid": [1]}}, r"unknown sweep parameter 'modle.stride'.*did you mean 'model'"),
        ({"optim.lr.peak": {"grid": [1e-3]}}, r"'optim.lr' is a value, not a section"),
        ({"optim": {"grid": [1]}}, r"'optim' names a whole section"),
    ],
)
def test_unknown_parameter_paths_are_named(space, message):
    with pytest.raises(ValueError, match=message):
        check_space(_sweep(space=space))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"space": {"optim.lr": [1e-3, 1e-2]}}, r"space.optim.lr must be one of \{grid"),
        ({"space": {"optim.lr": {"loguniform": [0, 1e-2]}}}, r"space.optim.lr: loguniform needs 0 < low < high"),
        ({"space": {"optim.lr": {"normal": [0, 1]}}}, r"unknown search-space kind 'normal'"),
        ({"space": {"anchor_set": {"grid": ["ti_s", "ti_b"]}}}, r"unknown anchor set 'ti_b' \(defined: ti_s, s_b\)"),
        ({"space": {"anchor_set": {"uniform": [0, 1]}}}, r"anchor_set must be a grid or choice"),
        ({"num_sample": 4}, r"unknown sweep field 'num_sample'; did you mean 'num_samples'"),
        ({"scheduler": {"name": "hyperband"}}, r"scheduler.name must be asha or fifo"),
        ({"anchor_sets": {"one": {"anchors": [0]}}}, r"anchor_sets.one: an anchor set needs at least two anchors"),
    ],
)
def test_bad_sweep_configs_are_refused_with_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        _sweep(**changes)


def test_bad_values_are_refused_before_any_trial_starts(digits):
    data = {"data": {"root": str(digits)}}
    sweep = _sweep(experiment=data, space={"sampler.name": {"choice": ["uniform", "fastest"]}})
    with pytest.raises(ValueError, match=r"sweep point \(sampler.name=fastest\): unknown sampler 'fastest'"):
        plan_sweep(sweep)
    sweep = _sweep(experiment=data, space={"model.kernel_size": {"grid": [2, 3]}})
    with pytest.raises(ValueError, match="kernel_size=3 is larger than the depth"):
        plan_sweep(sweep)
    sweep = _sweep(anchor_sets={"far": {"anchors": [0, 5]}}, space={"anchor_set": {"grid": ["far"]}})
    with pytest.raises(ValueError, match=r"anchor_sets.far: index 5 is outside the base experiment's 3 anchors"):
        plan_sweep(sweep)
    sweep = _sweep(experiment={**data, "eval": {"every_steps": 0}})
    with pytest.raises(ValueError, match="ASHA stops trials on periodic evaluations but eval.every_steps=0"):
        plan_sweep(sweep)


def test_plan_covers_every_anchor_set_in_the_objective_range(digits):
    plan = plan_sweep(load_sweep("tiny_digits", [f"data.root={digits}", "anchor_sets.s_b.anchors=[1, 2]",
                                                 "space.anchor_set={grid: [ti_s, s_b]}"]))
    lo, hi = plan.gmacs_range
    assert lo < hi and math.isclose(lo, 0.000494464, rel_tol=1e-3) and math.isclose(hi, 0.008572416, rel_tol=1e-3)
    assert (plan.max_steps, plan.eval_every_steps) == (8, 4)


def test_max_concurrent_trials_follows_the_limiting_resource():
    from snnet_ray.train.config import ScalingConfig
    from snnet_ray.tune import derive_max_concurrent_trials

    cpu = derive_max_concurrent_trials({"CPU": 2}, [ScalingConfig(num_workers=1)], num_trials=4)
    assert cpu.max_concurrent_trials == 2 and "2 CPUs" in cpu.reason
    gpu = derive_max_concurrent_trials({"CPU": 128, "GPU": 8}, [ScalingConfig(num_workers=4, use_gpu=True)])
    assert gpu.max_concurrent_trials == 2 and "8 GPUs" in gpu.reason
    assert derive_max_concurrent_trials({"CPU": 1}, [ScalingConfig(num_workers=2)]).max_concurrent_trials == 1
    assert derive_max_concurrent_trials({"CPU": 64}, [ScalingConfig()], given=3).max_concurrent_trials == 3


# -- the objective -------------------------------------------------------------------------------


def _row(cid: int, gmacs: float, top1: float | None, kind: str = "stitch") -> ConfigResult:
    return ConfigResult(config_id=cid, gmacs=gmacs, top1=top1, kind=kind)


def test_objective_is_the_normalised_area_under_the_frontier_step_curve():
    rows = [
        _row(0, 1.0, 70.0, "anchor"),
        _row(1, 2.0, 74.0),
        _row(2, 2.5, 73.0),  # dominated by config 1: not on the frontier
        _row(3, 3.0, 78.0),
        _row(4, 5.0, 80.0, "anchor"),
        _row(5, 4.0, None),  # not evaluated
    ]
    # best(b) = 70 on [1, 2), 74 on [2, 3), 78 on [3, 5): (70 + 74 + 2 * 78) / 4
    assert math.isclose(frontier_objective(rows, (1.0, 5.0)), (70 + 74 + 2 * 78) / 4)
    # A family with nothing affordable below 2 GMACs scores 0 there (a sweep range over other anchor sets).
    assert math.isclose(frontier_objective(rows[1:], (1.0, 5.0)), (0 + 74 + 2 * 78) / 4)
    # Budgets beyond the dearest config keep its accuracy.
    assert math.isclose(frontier_objective(rows, (1.0, 7.0)), (70 + 74 + 2 * 78 + 2 * 80) / 6)
    assert frontier_objective(rows, (2.0, 2.0)) == 74.0
    assert frontier_objective([_row(0, 1.0, None)], (1.0, 5.0)) is None


def test_family_summary_reports_min_mean_max_top1():
    from snnet_ray.tune import family_summary

    rows = [_row(0, 1.0, 60.0, "anchor"), _row(1, 2.0, 70.0), _row(2, 3.0, 80.0, "anchor")]
    summary = family_summary(rows, (1.0, 3.0))
    assert summary == {"objective": 65.0, "top1_min": 60.0, "top1_mean": 70.0, "top1_max": 80.0,
                       "configs_evaluated": 3}


# -- a real sweep ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(digits, tmp_path_factory):
    """tiny_digits sweep: 4 trials (2 anchor sets x 2 kernel sizes), 1 worker each, 2 CPUs."""
    import ray

    from snnet_ray.cli import main

    out = tmp_path_factory.mktemp("sweep")
    db = f"sqlite:///{out / 'results.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stdout = io.StringIO()
        with redirect_stdout(stdout):
            code = main([
                "sweep", "--config", "tiny_digits",
                "--set", f"data.root={digits}",
                "--set", f"results.url={db}",
                "--set", f"storage_path={out / 'storage'}",
                "--set", "name=tiny",
            ])  # fmt: skip
    finally:
        ray.shutdown()
    return {"code": code, "stdout": stdout.getvalue(), "db": db, "out": out}


@pytest.mark.slow
def test_sweep_runs_every_trial_and_reports_the_best(sweep_run):
    from snnet_ray.results import LocalResults

    assert sweep_run["code"] == 0, sweep_run["stdout"]
    text = sweep_run["stdout"]
    assert "max_concurrent_trials=2: the cluster has 2 CPUs" in text
    table = text[text.index("sweep tiny · 4 trials") :]
    lines = [line for line in table.splitlines() if re.match(r"[0-9a-f]{5}_\d{5}\s", line)]
    assert len(lines) == 4, table
    for column in ("anchor_set", "model.kernel_size", "optim.lr", "optim.stitch_lr_scale", "sampler.name",
                   "objective", "min top-1", "mean top-1", "max top-1", "status"):
        assert column in table
    assert all(("finished" in line) or ("stopped at step" in line) for line in lines), table

    with LocalResults(sweep_run["db"]) as results:
        runs = {r.run: r for r in results.runs() if r.trial_id}
        assert len(runs) == 4
        finished = []
        for run in runs.values():
            assert run.run == f"tiny-{run.trial_id}"
            assert set(run.hyperparameters) == {
                "anchor_set", "model.kernel_size", "optim.lr", "optim.stitch_lr_scale", "sampler.name",
            }
            assert run.status in ("finished", "stopped")
            assert run.checkpoints, f"{run.run} recorded no evaluation"
            assert "step-000004" in [c.checkpoint for c in run.checkpoints]
            if run.status == "finished":
                assert run.latest == "final"
                final = results.table(run.run, "final")
                assert sum(r.top1 is not None for r in final.rows) == len(final.rows)  # every config
                finished.append(run)
        assert finished, "ASHA keeps at least the better half of the trials"
        # The family really differs between trials: anchor set and kernel size change the configs.
        sizes = {len(results.table(r.run).rows) for r in runs.values()}
        assert len(sizes) > 1

    # The best trial is the finished one with the highest objective, and the table says so.
    scores = {}
    for line in lines:
        cells = line.split()
        scores[cells[0]] = (float(cells[6].rstrip("%")), "finished" in line)
    best_id = max((t for t, (_, done) in scores.items() if done), key=lambda t: scores[t][0])
    assert f"best trial: {best_id} (run tiny-{best_id})" in table
    assert "results:" in table and "storage:" in table


@pytest.mark.slow
def test_results_compare_works_on_sweep_trials(sweep_run, capsys):
    from snnet_ray.cli import main
    from snnet_ray.results import LocalResults

    with LocalResults(sweep_run["db"]) as results:
        # A finished trial against another one (finished, or stopped by ASHA: its latest evaluation).
        runs = sorted(results.runs(), key=lambda r: (r.status != "finished", r.run))
        a, b = runs[0].run, runs[1].run
    assert main(["results", "compare", "--db", sweep_run["db"], "--run", a, "--against", b, "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert {s["run"] for s in cmp["summaries"]} == {a, b}
    assert all(s["frontier_auc"] is not None for s in cmp["summaries"])
    assert main(["results", "runs", "--db", sweep_run["db"]]) == 0
    listing = capsys.readouterr().out
    assert a in listing and a.removeprefix("tiny-") in listing


def test_sweep_rayjob_runs_an_existing_sweep_with_valid_overrides():
    import shlex

    import yaml

    root = Path(__file__).resolve().parents[1]
    docs = list(yaml.safe_load_all((root / "cluster/kuberay/rayjob-sweep.yaml").read_text()))
    (job,) = [d for d in docs if d and d.get("kind") == "RayJob"]
    (cluster,) = [d for d in yaml.safe_load_all((root / "cluster/kuberay/raycluster.yaml").read_text())
                  if d and d.get("kind") == "RayCluster"]
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "the sweep RayJob's cluster spec drifted"
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["python", "jobs/sweep.py"] and (root / args[1]).is_file()
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    sweep = load_sweep(args[args.index("--config") + 1], overrides)
    check_space(sweep)
    cfg = trial_experiment(sweep, validation_points(sweep)[-1])
    assert cfg.scaling.use_gpu and len(cfg.model.pretrained) == len(cfg.model.anchors) == 3
    assert all(p.startswith("s3://BUCKET/weights/") for p in cfg.model.pretrained)
    assert sweep.max_concurrent_trials == 4  # an autoscaling cluster starts without GPUs to count
