"""Sweeps see the stitches: periodic evaluations score configs across the whole GMACs range
(`eval.configs: span:N`), so ASHA's objective moves with stitch hyperparameters."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
import yaml

from snnet_ray import SNNet
from snnet_ray.eval.select import check_eval_configs, resolve_eval_configs, spanning_configs
from snnet_ray.train.config import load_experiment


def test_span_picks_anchors_and_stitches_across_the_gmacs_range():
    model = SNNet.from_timm("resnet18,resnet50", device="meta")
    ids = spanning_configs(model, 4)
    gmacs = sorted(model.cost(i).gmacs for i in ids)
    assert {0, 1} <= set(ids) and len(ids) == 6
    lo, hi = model.cost(0).gmacs, model.cost(1).gmacs
    stitched = [model.cost(i).gmacs for i in ids if i > 1]
    # one stitch in each quarter of the range's span of stitches: low and high ends both covered
    assert min(stitched) < lo + 0.5 * (hi - lo) < max(stitched) and gmacs[0] == lo and gmacs[-1] == hi
    assert resolve_eval_configs(model, "span") == sorted(resolve_eval_configs(model, "all"))  # 8 >= stitches
    assert resolve_eval_configs(model, "anchors") == [0, 1]
    for bad in ("span:0", "spam", 3, [1, -2]):
        with pytest.raises(ValueError, match="eval.configs"):
            check_eval_configs(bad)
    for name in ("deit_ti_s_b", "swin_ti_s_b", "tiny_digits"):  # every sweep preset uses a span
        sweep = yaml.safe_load((load_experiment.__globals__["PRESETS_DIR"] / "sweeps" / f"{name}.yaml").read_text())
        assert str(sweep["experiment"]["eval"]["configs"]).startswith("span")


@pytest.mark.slow
def test_two_trials_differing_only_in_stitch_lr_get_different_objectives(tmp_path):
    import ray

    from snnet_ray.cli import main
    from snnet_ray.data import write_digits_shards
    from snnet_ray.results import LocalResults
    from snnet_ray.tune.objective import family_summary

    digits = tmp_path / "digits"
    write_digits_shards(digits)
    sweep = {
        "name": "slr",
        "base": "tiny_digits",
        "experiment": {
            "model": {"ls_init_images": 32, "anchors": load_experiment("tiny_digits").model.anchors[:2]},
            "data": {"num_workers": 0, "root": str(digits)},
            "scaling": {"num_workers": 1},
            "schedule": {"max_steps": 16},
            "optim": {"lr": 3.0e-3},
            # 8 steps before the compared evaluation: enough draws that the sampled stitches share
            # layers with the evaluated ones (4 steps sometimes trained none of them)
            "run": {"checkpoint_every_steps": 8, "log_every_steps": 4, "keep_checkpoints": 1},
            "failure": {"max_failures": 0},
            "eval": {"every_steps": 8, "configs": "span:4", "max_shards": 1, "final": True},
        },
        "space": {"optim.stitch_lr_scale": {"grid": [0.1, 30.0]}},
        "num_samples": 1,
        "scheduler": {"name": "asha", "grace_period": None, "reduction_factor": 2},
        "trial_cpus": 0,
        "trial_memory_mb": 256,
        "max_failures": 0,
        "search_seed": 0,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    db = f"sqlite:///{tmp_path / 'results.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["sweep", "--config", str(path), "--set", f"results.url={db}",
                         "--set", f"storage_path={tmp_path / 'storage'}"])  # fmt: skip
    finally:
        ray.shutdown()
    assert code == 0, out.getvalue()
    with LocalResults(db) as results:
        runs = [r for r in results.runs() if r.trial_id]
        assert len(runs) == 2 and {r.hyperparameters["optim.stitch_lr_scale"] for r in runs} == {0.1, 30.0}
        table = results.table(runs[0].run, "step-000008")
        anchors = [r.gmacs for r in table.rows if r.kind == "anchor"]
        assert sum(r.kind == "stitch" and r.top1 is not None for r in table.rows) == 4  # it saw stitches
        # what ASHA compared at step 8: ObjectiveReportCallback.objective computes exactly this
        gmacs_range = (min(anchors), max(anchors))
        scores = {r.run: family_summary(results.table(r.run, "step-000008").rows, gmacs_range)["objective"]
                  for r in runs}  # fmt: skip
    assert len(set(scores.values())) == 2, scores
