"""DeepSpeed config: batch arithmetic, precision per device, ZeRO-3 needs the synchronized sampler."""

from __future__ import annotations

import pytest

from snnet_ray.train.deepspeed_config import DeepSpeedConfig
from snnet_ray.train.samplers import list_samplers


def test_global_batch_derives_gradient_accumulation():
    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=128, global_batch_size=2048, gradient_clipping=5.0)
    config = ds.to_dict(world_size=8, device_type="cuda")
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 2048
    assert config["train_micro_batch_size_per_gpu"] == 128
    assert config["gradient_clipping"] == 5.0
    assert config["zero_optimization"]["stage"] == 2
    assert config["bf16"] == {"enabled": True, "check_grad_overflow": False}  # no per-step host sync
    assert config["communication_data_type"] == "fp32"  # the precision policy's default reduction
    assert config["zero_allow_untested_optimizer"] is True


def test_buckets_are_sized_to_the_model_and_overlap_the_backward_pass():
    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=128)
    zero = ds.to_dict(8, "cuda", num_parameters=118_000_000)["zero_optimization"]
    assert 25_000_000 <= zero["reduce_bucket_size"] <= 50_000_000  # DeiT-Ti/S/B: ~30 M, four buckets
    assert zero["overlap_comm"] is True
    assert ds.to_dict(8, "cuda", num_parameters=1_000)["zero_optimization"]["reduce_bucket_size"] == 1 << 20
    assert zero["reduce_bucket_size"] % 1024 == 0  # DeepSpeed asserts aligned buckets
    fixed = DeepSpeedConfig(zero_stage=2, reduce_bucket_size=7).to_dict(2)
    assert fixed["zero_optimization"]["reduce_bucket_size"] == 7
    assert DeepSpeedConfig(reduce_dtype="bf16").to_dict(2, "cuda")["communication_data_type"] == "bf16"
    with pytest.raises(ValueError, match="reduce_dtype must be 'fp32' or 'bf16'"):
        DeepSpeedConfig(reduce_dtype="fp16")


def test_one_precision_policy_for_training_evaluation_and_benchmarks():
    import torch

    from snnet_ray.precision import PrecisionPolicy

    gpu, cpu = DeepSpeedConfig().precision("cuda"), DeepSpeedConfig().precision("cpu")
    assert gpu == PrecisionPolicy.for_device("cuda:0") and gpu.param_dtype == torch.bfloat16
    assert gpu.reduce_dtype == torch.float32
    assert cpu.param_dtype == torch.float32 and not cpu.bf16
    model = gpu.cast_model(torch.nn.Linear(2, 2))  # what evaluation and the benchmarks run
    assert model.weight.dtype == torch.bfloat16
    assert gpu.cast_input(torch.zeros(1, 2)).dtype == torch.bfloat16


def test_bf16_on_gpu_only():
    ds = DeepSpeedConfig(micro_batch_size=4)
    assert ds.to_dict(world_size=2, device_type="cpu")["bf16"] == {"enabled": False}
    assert DeepSpeedConfig(bf16=False).to_dict(1, "cuda")["bf16"] == {"enabled": False}
    assert "communication_data_type" not in ds.to_dict(2, "cpu")
    assert "zero_allow_untested_optimizer" not in ds.to_dict(2, "cpu", torch_optimizer=False)


def test_batch_sizes_that_do_not_divide_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"global_batch_size=1000 is not a multiple of .* 128 x 8 = 1024"):
        DeepSpeedConfig(micro_batch_size=128, global_batch_size=1000).to_dict(world_size=8)
    with pytest.raises(ValueError, match="needs gradient_accumulation_steps=2 .* but gradient_accumulation_steps=4"):
        DeepSpeedConfig(micro_batch_size=128, global_batch_size=2048, gradient_accumulation_steps=4).to_dict(8)
    assert DeepSpeedConfig(micro_batch_size=32, gradient_accumulation_steps=3).global_batch(world_size=4) == 384


@pytest.mark.parametrize("name", list_samplers())
def test_zero3_requires_the_synchronized_sampler(name):
    ds = DeepSpeedConfig(zero_stage=3)
    if name == "synchronized":
        ds.check_sampler(name)
    else:
        with pytest.raises(ValueError, match=rf"deepspeed.zero_stage=3 requires sampler.name='synchronized'.*{name}"):
            ds.check_sampler(name)
    for stage in (0, 1, 2):
        DeepSpeedConfig(zero_stage=stage).check_sampler(name)


def test_bad_fields_are_named():
    with pytest.raises(ValueError, match="deepspeed.zero_stage must be 0, 1, 2 or 3"):
        DeepSpeedConfig(zero_stage=4)
    with pytest.raises(ValueError, match="deepspeed.micro_batch_size"):
        DeepSpeedConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match="deepspeed.gradient_clipping"):
        DeepSpeedConfig(gradient_clipping=-1)
