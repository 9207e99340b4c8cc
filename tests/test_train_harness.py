"""Ray Train + DeepSpeed harness on a real local cluster: 2 CPU workers (gloo), a tiny real SNNet.

What a user of the trainer relies on:
- ZeRO 0/1/2 with ranks on different configs in the same step: parameters identical on every
  rank *and* equal to a single-process reference that averages the ranks' gradients; ZeRO-3 the
  same with the synchronized sampler.
- A run stopped after a checkpoint, resumed in a new run, continues at the same step with the
  same model, optimizer, scheduler and sampler state: it ends where an uninterrupted run ends.
- A worker killed mid-run (SIGKILL) is replaced (`FailureConfig(max_failures=1)`); training
  continues from the last checkpoint and no step is counted twice.

The worker loops below show how the pieces of `snnet_ray.train` assemble into a trainer.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ANCHORS = [
    ("deit_tiny_patch16_224", dict(embed_dim=16, depth=2, num_heads=2)),
    ("deit_small_patch16_224", dict(embed_dim=24, depth=2, num_heads=2)),
    ("deit_base_patch16_224", dict(embed_dim=32, depth=2, num_heads=2)),
]
TIMM_KWARGS = dict(img_size=16, patch_size=8, num_classes=10)
WORLD = 2
MICRO_BATCH = 4
OPTIM = dict(lr=3e-3, min_lr=1e-5, weight_decay=0.05, anchor_lr_scale=0.5, stitch_lr_scale=2.0)


# -- shared by workers and the reference ------------------------------------------------------------
def make_model():
    from snnet_ray import SNNet

    torch.manual_seed(0)
    return SNNet.from_timm(ANCHORS, **TIMM_KWARGS)


def make_batch(micro_step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data of (micro-step, rank): a restarted worker sees exactly the batches it would have."""
    g = torch.Generator().manual_seed(10_000 * micro_step + rank)
    return torch.randn(MICRO_BATCH, 3, 16, 16, generator=g), torch.randint(0, 10, (MICRO_BATCH,), generator=g)


def config_costs(model) -> list[float]:
    return [model.cost(c.id).gmacs for c in model.configs]


@functools.cache
def tiny_costs() -> tuple[float, ...]:
    return tuple(config_costs(make_model()))


# -- worker loops -------------------------------------------------------------------------------------
def parity_loop(config: dict) -> None:
    """For each ZeRO stage: a few steps, then every rank writes its (gathered) parameters."""
    import deepspeed
    import ray.train

    from snnet_ray.train.deepspeed_config import DeepSpeedConfig
    from snnet_ray.train.engine import build_engine, optimizer_step, select, unwrap
    from snnet_ray.train.loss import SNNetLoss
    from snnet_ray.train.optim import OptimConfig, build_optimizer, build_scheduler
    from snnet_ray.train.samplers import SamplerConfig

    rank = ray.train.get_context().get_world_rank()
    out = Path(config["out"])
    for stage, sampler_name, overlap in config["stages"]:
        model = make_model()
        sampler = SamplerConfig(name=sampler_name, seed=1).build(config_costs(model), WORLD, rank)
        ds = DeepSpeedConfig(
            zero_stage=stage,
            micro_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=config["accumulation"],
            gradient_clipping=1.0,
            reduce_bucket_size=20_000,  # several buckets: the reduction order matters
            overlap_comm=overlap,  # buckets reduce while the backward pass runs (the default)
        )
        ds.check_sampler(sampler_name)
        opt_cfg = OptimConfig(**OPTIM)
        optimizer = build_optimizer(model, opt_cfg)
        scheduler = build_scheduler(optimizer, opt_cfg, total_steps=config["steps"], warmup_steps=1)
        engine = build_engine(model, optimizer, scheduler, ds, synchronized=sampler.synchronized)
        criterion = SNNetLoss()
        for micro in range(config["steps"] * config["accumulation"]):
            # every rank's config: only the union of the ranks' paths is reduced (ZeRO-1/2)
            select(engine, sampler.sample(micro), sampler.assignment(micro))
            x, y = make_batch(micro, rank)
            engine.backward(criterion(engine(x), y))
            optimizer_step(engine)
        params = list(unwrap(engine).parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
            state = {n: p.detach().clone() for n, p in unwrap(engine).named_parameters()}
        torch.save(
            {"params": state, "lr": [g["lr"] for g in engine.optimizer.param_groups]},
            out / f"stage{stage}_{sampler_name}_{overlap}_rank{rank}.pt",
        )
        engine.destroy()


def train_loop(config: dict) -> None:
    """A resumable SN-Net training loop: checkpoints every N steps, optional stop and kill points."""
    import ray.train
    import torch.distributed as dist

    from snnet_ray.train.checkpoint import RandomState, TrainProgress, report_checkpoint, restore_checkpoint
    from snnet_ray.train.deepspeed_config import DeepSpeedConfig
    from snnet_ray.train.engine import build_engine, optimizer_step, unwrap
    from snnet_ray.train.loss import SNNetLoss
    from snnet_ray.train.optim import OptimConfig, build_optimizer, build_scheduler
    from snnet_ray.train.samplers import SamplerConfig, all_reduce_counts

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    out = Path(config["out"])
    model = make_model()
    sampler = SamplerConfig(name="uniform", seed=1).build(config_costs(model), WORLD, rank)
    ds = DeepSpeedConfig(
        zero_stage=config["zero_stage"], micro_batch_size=MICRO_BATCH, gradient_accumulation_steps=2,
        gradient_clipping=1.0,
    )
    opt_cfg = OptimConfig(**OPTIM)
    optimizer = build_optimizer(model, opt_cfg)
    scheduler = build_scheduler(optimizer, opt_cfg, total_steps=config["steps"], warmup_steps=1)
    engine = build_engine(model, optimizer, scheduler, ds, synchronized=sampler.synchronized)
    criterion = SNNetLoss()
    accumulation = engine.gradient_accumulation_steps()

    progress = TrainProgress()
    states = {"progress": progress, "sampler": sampler, "rng": RandomState()}
    attempt = len(list(out.glob(f"attempt_rank{rank}_*")))
    (out / f"attempt_rank{rank}_{attempt}").write_text(json.dumps({"resumed": False}))
    if restore_checkpoint(engine, states):
        (out / f"attempt_rank{rank}_{attempt}").write_text(json.dumps({"resumed": True, "step": progress.step}))
        assert engine.global_steps == progress.step

    stop = config.get("stop_after", config["steps"])
    while progress.step < stop:
        for _ in range(accumulation):
            unwrap(engine).select(sampler.sample(progress.micro_step))
            x, y = make_batch(progress.micro_step, rank)
            loss = criterion(engine(x), y)
            engine.backward(loss)
            optimizer_step(engine)
            progress.micro_step += 1
            progress.samples += len(x) * ctx.get_world_size()
        progress.step += 1
        with (out / f"steps_rank{rank}.log").open("a") as f:
            f.write(f"{attempt} {progress.step}\n")
        if config.get("kill_at") == progress.step and rank == 1 and not (out / "killed").exists():
            (out / "killed").touch()  # first attempt only
            time.sleep(config.get("kill_delay_s", 0))
            os.kill(os.getpid(), signal.SIGKILL)
        if progress.step % config["checkpoint_every"] == 0 or progress.step == stop:
            loss_t = loss.detach().clone()
            dist.all_reduce(loss_t)
            metrics = {
                "step": progress.step,
                "samples": progress.samples,
                "loss": loss_t.item() / ctx.get_world_size(),
                "lr": scheduler.get_last_lr()[0],
                "config_counts": all_reduce_counts(sampler.counts),
            }
            report_checkpoint(engine, states, metrics, name=f"step_{progress.step:06d}")


# -- the single-process reference ---------------------------------------------------------------------
@functools.cache
def reference_run(steps: int, accumulation: int, sampler_name: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    """What data-parallel training must compute: every rank's path, gradients averaged, one optimizer."""
    from snnet_ray.train.loss import SNNetLoss
    from snnet_ray.train.optim import OptimConfig, build_optimizer, build_scheduler
    from snnet_ray.train.samplers import SamplerConfig

    model = make_model()
    sampler = SamplerConfig(name=sampler_name, seed=1).build(config_costs(model), WORLD, 0)
    opt_cfg = OptimConfig(**OPTIM)
    optimizer = build_optimizer(model, opt_cfg)
    scheduler = build_scheduler(optimizer, opt_cfg, total_steps=steps, warmup_steps=1)
    criterion = SNNetLoss()
    micro = 0
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # DeepSpeed updates every parameter, unused ones with zero grads
        for _ in range(accumulation):
            for rank, cfg in enumerate(sampler.assignment(micro)):
                model.select(cfg)
                x, y = make_batch(micro, rank)
                (criterion(model(x), y) / (WORLD * accumulation)).backward()
            micro += 1
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return {n: p.detach() for n, p in model.named_parameters()}, [g["lr"] for g in optimizer.param_groups]


def assert_params_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    worst = max((actual[k] - expected[k]).abs().max().item() for k in expected)
    assert worst < 1e-5, f"parameters differ from the reference by up to {worst:.2e}"


def checkpoint_params(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from snnet_ray.train.checkpoint import read_tensors

    return read_tensors(checkpoint_dir)


def checkpoint_states(checkpoint_dir: Path) -> dict:
    from snnet_ray.train.checkpoint import read_train_state

    return read_train_state(checkpoint_dir)["states"]


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    tests_dir = str(Path(__file__).parent)
    ray.init(
        address="local",  # a fresh cluster, whatever `ray start` left in /tmp/ray/ray_current_cluster
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir, "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def fit(loop, config: dict, storage: Path, name: str, max_failures: int = 0):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=WORLD, use_gpu=False),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    return trainer.fit()


# (ZeRO stage, sampler, overlap_comm): ZeRO-1/2 with ranks on different paths, overlapped and not
PARITY_RUNS = [
    (0, "uniform", False),
    (1, "uniform", True),
    (2, "uniform", True),
    (2, "synchronized", True),
    (3, "synchronized", True),
]


@pytest.fixture(scope="module")
def parity_runs(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    config = {"out": str(out), "steps": 3, "accumulation": 2, "stages": PARITY_RUNS}
    fit(parity_loop, config, tmp_path_factory.mktemp("ray"), "parity")
    return out, config


# -- tests --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stage", "sampler_name", "overlap"), PARITY_RUNS)
def test_zero_stage_matches_the_single_process_reference(parity_runs, stage, sampler_name, overlap):
    """ZeRO 0-2 with ranks on different configs (uniform), and 2-3 with the synchronized sampler."""
    from snnet_ray.train.samplers import SamplerConfig

    out, config = parity_runs
    sampler = SamplerConfig(name=sampler_name, seed=1).build(list(tiny_costs()), WORLD, 0)
    micro_steps = config["steps"] * config["accumulation"]
    configs = [sampler.assignment(m) for m in range(micro_steps)]
    diverged = any(len(set(c)) > 1 for c in configs)
    assert diverged == (sampler_name == "uniform"), configs
    assert len({c[0] for c in configs}) > 1  # paths change between steps: parameters go unused

    files = [out / f"stage{stage}_{sampler_name}_{overlap}_rank{r}.pt" for r in range(WORLD)]
    ranks = [torch.load(f, weights_only=False) for f in files]
    for name, p in ranks[0]["params"].items():
        assert torch.equal(p, ranks[1]["params"][name]), f"{name} differs across ranks"
    params, lrs = reference_run(config["steps"], config["accumulation"], sampler_name)
    assert_params_close(ranks[0]["params"], params)
    # the schedule reached the same per-group lrs (anchor and stitch scales) through DeepSpeed's wrapping
    assert ranks[0]["lr"] == pytest.approx(lrs) and len(set(lrs)) == 2


@pytest.fixture(scope="module")
def interrupted_run(ray_cluster, tmp_path_factory):
    """One run of 6 steps (checkpoints every 2, ZeRO-2), interrupted twice.

    Run 1: rank 1 is killed after step 3 (first attempt only); `FailureConfig(max_failures=1)`
    restarts the workers from step 2's checkpoint; the run stops after step 4. Run 2: the same
    run started again (same name and storage path) continues from step 4 to 6.
    """
    out = tmp_path_factory.mktemp("interrupted")
    storage = tmp_path_factory.mktemp("ray")
    # Ray's controller collects reports every 2 s: a checkpoint reported just before a worker dies
    # is lost, so the killer waits long enough for step 2's to be registered.
    config = {"out": str(out), "zero_stage": 2, "steps": 6, "checkpoint_every": 2}
    first = fit(train_loop, {**config, "stop_after": 4, "kill_at": 3, "kill_delay_s": 5}, storage, "run", 1)
    second = fit(train_loop, config, storage, "run")
    return out, first, second


def attempts(out: Path, rank: int = 0) -> list[dict]:
    return [json.loads((out / f"attempt_rank{rank}_{i}").read_text()) for i in range(3)]


def steps_by_attempt(out: Path, rank: int = 0) -> dict[int, list[int]]:
    steps: dict[int, list[int]] = {}
    for line in (out / f"steps_rank{rank}.log").read_text().splitlines():
        attempt, step = map(int, line.split())
        steps.setdefault(attempt, []).append(step)
    return steps


def test_killed_worker_restarts_from_the_last_checkpoint_without_counting_a_step_twice(interrupted_run):
    out, first, _ = interrupted_run
    assert first.error is None
    assert (out / "killed").exists()
    for rank in range(WORLD):
        assert attempts(out, rank)[1] == {"resumed": True, "step": 2}
        assert steps_by_attempt(out, rank)[0] == [1, 2, 3]
        assert steps_by_attempt(out, rank)[1] == [3, 4]  # step 3 ran again, from step 2's state

    total_micro = 4 * 2
    assert first.metrics["step"] == 4
    assert first.metrics["samples"] == total_micro * MICRO_BATCH * WORLD
    assert sum(first.metrics["config_counts"]) == total_micro * WORLD
    with first.checkpoint.as_directory() as d:
        state = checkpoint_states(Path(d))  # one state for the job, whatever the world size
        assert state["progress"]["micro_step"] == total_micro
        assert sum(state["sampler"]["counts"]) == total_micro * WORLD


def test_run_started_again_continues_at_the_same_step_and_state(interrupted_run):
    out, _, second = interrupted_run
    assert second.error is None
    for rank in range(WORLD):
        assert attempts(out, rank)[2] == {"resumed": True, "step": 4}
        assert steps_by_attempt(out, rank)[2] == [5, 6]
    assert sorted(m["step"] for _, m in second.best_checkpoints) == [2, 4, 6]
    assert second.metrics["step"] == 6
    assert second.metrics["samples"] == 12 * MICRO_BATCH * WORLD

    # the model (and so the optimizer, scheduler, sampler and data position) ended exactly where
    # an uninterrupted run ends
    uninterrupted, _ = reference_run(steps=6, accumulation=2, sampler_name="uniform")
    with second.checkpoint.as_directory() as d:
        assert_params_close(checkpoint_params(Path(d)), uninterrupted)
