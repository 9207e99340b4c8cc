"""A real training micro-step (DeepSpeed engine on CPU, one rank) never waits for the device.

What a user relies on: between log steps the host only queues work - no `.item()`, `float(t)` or
`bool(t)` (all dispatch to `aten._local_scalar_dense`) in batch finishing, config selection,
forward, backward, the gradient release chain or the optimizer step - and the loss read at the log
step is the mean of the micro-steps' losses.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from tiny_families import tiny_snnet
from torch.utils._python_dispatch import TorchDispatchMode

pytestmark = pytest.mark.slow


class CountScalarReads(TorchDispatchMode):
    """Counts device -> host scalar reads (what `.item()`, `float(t)`, `bool(t)` dispatch to)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def one_rank_group():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("zero_stage", [2])  # ZeRO-2: the release chain and the partitioned optimizer
def test_micro_steps_between_log_steps_never_read_the_device(one_rank_group, zero_stage):
    from snnet_ray.data import DataConfig
    from snnet_ray.data.device import DeviceFinisher
    from snnet_ray.train.deepspeed_config import DeepSpeedConfig
    from snnet_ray.train.engine import build_engine
    from snnet_ray.train.loss import SNNetLoss
    from snnet_ray.train.optim import OptimConfig, build_optimizer, build_scheduler
    from snnet_ray.train.samplers import build_sampler
    from snnet_ray.train.step import StepWindow, TrainStep

    torch.manual_seed(0)
    model = tiny_snnet("vit")
    sampler = build_sampler("uniform", [model.cost(c.id).gmacs for c in model.configs], world_size=1, rank=0)
    ds = DeepSpeedConfig(zero_stage=zero_stage, micro_batch_size=4, gradient_accumulation_steps=2)
    optim_cfg = OptimConfig(lr=1e-3)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=10, warmup_steps=1)
    engine = build_engine(model, optimizer, scheduler, ds, synchronized=False, world_size=1)
    data_cfg = DataConfig("unused", input_size=32, batch_size=4, re_prob=0.5, mixup_alpha=0.8, cutmix_alpha=1.0)
    precision = ds.precision("cpu")
    step = TrainStep(engine, SNNetLoss(), torch.device("cpu"), precision, DeviceFinisher(data_cfg, 10, "cpu"))
    window = StepWindow()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(6)
    ]
    losses = []
    counter = CountScalarReads()
    with counter:
        for micro, (images, labels) in enumerate(batches):  # 3 optimizer steps of 2 micro-steps
            step(images, labels, sampler.sample(micro), sampler.assignment(micro), window)
            losses.append(window.loss_tensor.clone())
    assert counter.reads == 0, f"{counter.reads} host reads of device values between log steps"
    assert engine.global_steps == 3
    # the log step reads the window once: the mean of the micro-steps' losses
    per_micro = [float(b - a) for a, b in zip([torch.zeros((), dtype=torch.float64), *losses], losses)]
    assert window.images == 24
    assert window.loss_sum / 24 == pytest.approx(sum(per_micro) / 24)
    assert all(v > 0 for v in per_micro)
    engine.destroy()
