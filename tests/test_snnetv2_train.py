"""An SN-Netv2 trains end to end: Ray Train, DeepSpeed ZeRO-2 on CPU, digits shards.

Round trips, LoRA stitching layers (frozen least-squares base), LAMB and resource-constrained
sampling through the real worker loop; the final one-pass evaluation scores every config, round
trips included, and the checkpoint reloads as the same SN-Netv2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from snnet_ray.data import write_digits_shards
from snnet_ray.results import LocalResults
from snnet_ray.stitching.saving import load_snnet
from snnet_ray.train.config import load_experiment
from snnet_ray.train.launch import run_experiment

pytestmark = pytest.mark.slow

ANCHORS = (
    "[[deit3_small_patch16_224, {embed_dim: 16, depth: 3, num_heads: 2}],"
    " [deit3_base_patch16_224, {embed_dim: 24, depth: 6, num_heads: 2}]]"
)


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_snnetv2_trains_round_trips_with_lora_layers(tmp_path, cluster):
    write_digits_shards(tmp_path / "digits")
    cfg = load_experiment(
        "tiny_digits",
        [
            f"data.root={tmp_path / 'digits'}",
            f"run.storage_path={tmp_path / 'runs'}",
            f"results.url=sqlite:///{tmp_path / 'results.db'}",
            f"model.anchors={ANCHORS}",
            "model.timm_kwargs={img_size: 32, patch_size: 8, num_classes: 10}",
            "model.rule=snnetv2",
            "model.lora_r=4",
            "optim.name=lamb",
            "optim.lr=1e-2",
            "optim.lora_lr_scale=10",
            "sampler.name=resource_constrained",
            "sampler.flops_gap=0.0005",
            "schedule.max_steps=6",
            "run.checkpoint_every_steps=6",
            "eval.every_steps=0",
        ],
    )
    outcome = run_experiment(cfg, run="v2")
    rows = [r for r in LocalResults(tmp_path / "results.db").table("v2", "final").rows if r.samples]
    # 2 anchors + SL, LS at boundaries 1 and 2 + one LSL and one SLS round trip
    assert len(rows) == 8 and all(r.samples == 360 for r in rows)

    model_dir = Path(outcome.checkpoint) / "model"
    model = load_snnet(model_dir)
    assert model.rule == "snnetv2" and model.lora_r == 4
    assert {c.variant or "anchor" for c in model.configs} == {"anchor", "SL", "LS", "LSL", "SLS"}
    state = load_file(str(model_dir / "model.safetensors"))
    # the low-rank updates of the layers the sampled paths used trained away from their zero start
    assert any(state[f"stitch_layers.{i}.lora_b"].abs().sum() > 0 for i in range(len(model.stitch_layers)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model.eval().forward_config(x, len(model.configs) - 1)).all()
