"""The SN-Net trainer that runs in every Ray Train worker.

`Trainer(cfg, results_url, run)` builds its parts in a fixed order (torchtitan style):
distributed context and device, SNNet (anchor weights from files), data, loss, sampler,
optimizer and schedule, least-squares init (fresh runs only), DeepSpeed engine, checkpoint
restore; `train()` is the loop:

    for each micro-step: config = sampler.sample(micro_step); select it; forward; backward; step
    every log_every steps:        all-reduced metrics, one log line, the context's report (Ray's or a file)
    every checkpoint_every steps: resharding checkpoint (every rank a share) + the SNNet (model/, rank 0)
    every eval.every_steps:       one-pass evaluation of the chosen configs on the first shards
    at the end:                   final checkpoint, every config on the full validation set

Evaluations go to the results service as exact partial counts per (config, shard), keyed so
that evaluating again replaces a record instead of adding one. A restart that resumes from the
final checkpoint (the weights the final evaluation used) skips the shards already recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from snnet_ray import collectives
from snnet_ray.train.config import ExperimentConfig, load_experiment
from snnet_ray.train.context import WorkerContext
from snnet_ray.train.step import StepWindow

__all__ = ["Trainer", "configure_worker_logging", "train_loop_per_worker"]

log = logging.getLogger("snnet_ray.train")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: `TorchTrainer(train_loop_per_worker, train_loop_config=...)`."""
    cfg = load_experiment(loop_config["experiment"])
    Trainer(cfg, results_url=loop_config.get("results_url"), run=loop_config["run"]).train()


class Trainer:
    """One worker's share of an SN-Net training run, under Ray Train or plain torch.distributed
    (`context`: `snnet_ray.train.context.LocalContext`; Ray Train's `RayContext` by default)."""

    def __init__(
        self, cfg: ExperimentConfig, results_url: str | None, run: str, context: WorkerContext | None = None
    ) -> None:
        from snnet_ray.train.checkpoint import RandomState, TrainProgress

        if context is None:
            from snnet_ray.train.context import RayContext

            storage = cfg.run.storage_path
            run_dir = None if "://" in storage else Path(storage).expanduser() / run
            context = RayContext(cfg.scaling.use_gpu, run_dir=run_dir)
        self.cfg, self.run, self.results_url = cfg, run, results_url
        # 1. distributed context and device (the launcher's: Ray's get_device(), or LOCAL_RANK)
        self.ctx = context
        self.rank, self.world = context.rank, context.world_size
        self.device = context.device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        configure_worker_logging(self.rank)
        resume = contextlib.ExitStack()
        checkpoint = resume.enter_context(context.resume_directory())
        # 1b. the node's CUDA driver and the network the gradient all-reduce runs over: the first collective
        from snnet_ray.train.network_check import startup_check

        self.network = startup_check(self.device, run=run, results_url=results_url, use_gpu=cfg.scaling.use_gpu)

        # 2. model: identical initial weights on every rank (same seed), pretrained anchors from files
        torch.manual_seed(cfg.seed)
        self.model = _build_model(cfg).to(self.device)
        if cfg.model.compile:
            self.model.compile_blocks()  # regional: every block once, no recompile per config
        # 3. data
        self.progress = TrainProgress()
        self.train_loader = self._train_loader(seed_offset=0)
        self.accumulation = cfg.deepspeed.accumulation_steps(self.world)
        self.steps_per_epoch = max(1, self.train_loader.steps_per_epoch // self.accumulation)
        total = math.ceil(cfg.schedule.epochs * self.steps_per_epoch)
        self.total_steps = min(total, cfg.schedule.max_steps or total)
        warmup = min(round(cfg.schedule.warmup_epochs * self.steps_per_epoch), self.total_steps)
        # 4. loss: label smoothing lives in data.label_smoothing (mixup targets, or the loss without mixup)
        loss_cfg = cfg.loss
        if not cfg.data.mixes and not loss_cfg.label_smoothing:
            loss_cfg = dataclasses.replace(loss_cfg, label_smoothing=cfg.data.label_smoothing)
        self.criterion = loss_cfg.build(self.model.num_classes, self.device)
        # 5. sampler over the configs' costs (GMACs)
        costs = [self.model.cost(c.id).gmacs for c in self.model.configs]
        self.sampler = cfg.sampler.build(costs, self.world, self.rank)
        # 6. optimizer and schedule (lr scaled to the global batch)
        from snnet_ray.train.optim import build_optimizer, build_scheduler

        optim_cfg = dataclasses.replace(cfg.optim, lr=cfg.peak_lr)
        optimizer = build_optimizer(self.model, optim_cfg)
        scheduler = build_scheduler(optimizer, optim_cfg, total_steps=self.total_steps, warmup_steps=warmup)
        # 7. least-squares init of the stitching layers, fresh runs only (a resume loads trained ones)
        if checkpoint is None and cfg.model.ls_init_images > 0:
            self._least_squares_init()
        # 8. DeepSpeed engine (ZeRO-1/2 with per-rank configs get ordered gradients, see engine.py)
        from snnet_ray.train.engine import build_engine, unwrap

        self.engine = build_engine(self.model, optimizer, scheduler, cfg.deepspeed, self.sampler.synchronized)
        self.snnet = unwrap(self.engine)
        # One precision policy (snnet_ray.precision): the engine's, evaluation's and the benchmarks'.
        self.precision = cfg.deepspeed.precision(self.device.type)
        self.dtype = self.precision.param_dtype
        from snnet_ray.data.device import DeviceFinisher
        from snnet_ray.train.step import TrainStep

        finish = DeviceFinisher(cfg.data, self.model.num_classes, self.device) if cfg.data.finish_on_device else None
        self.step_fn = TrainStep(self.engine, self.criterion, self.device, self.precision, finish)
        # 9. restore (from a checkpoint of any world size, see checkpoint.py)
        self.states = {"progress": self.progress, "sampler": self.sampler, "rng": RandomState(cfg.seed)}
        self.resumed = False
        self.restored_step: int | None = None
        if checkpoint is not None:
            from snnet_ray.train.checkpoint import load_checkpoint

            load_checkpoint(self.engine, self.states, checkpoint)
            self.resumed = True
            self.restored_step = self.progress.step
            # A resumed epoch draws fresh batches rather than replaying the ones already trained.
            self.train_loader = self._train_loader(seed_offset=self.progress.step)
            self.train_loader.set_epoch(self.progress.epoch)
            self._log(f"resumed at step {self.progress.step} (epoch {self.progress.epoch}) from {checkpoint}")
            self._warn_on_new_global_batch()
        resume.close()
        # 10. results service (evaluations are ingested by every rank)
        from snnet_ray.results import connect

        self.results = connect(results_url) if results_url else None
        self._eval_copy: Any = None
        self._log(
            f"{len(self.model.configs)} configs, {self.world} workers x {cfg.data.batch_size} images x "
            f"{self.accumulation} accumulation, {self.steps_per_epoch} steps/epoch, {self.total_steps} steps, "
            f"peak lr {cfg.peak_lr:.3g}, sampler {cfg.sampler.name}, ZeRO-{cfg.deepspeed.zero_stage}, {self.device}"
        )

    # -- the loop -----------------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        if cfg.eval.at_start and not self.resumed:
            self.evaluate("init", cfg.eval.configs, cfg.eval.max_shards)
        window = _Window()
        while self.progress.step < self.total_steps:
            epoch_steps = self.steps_per_epoch - self.progress.step % self.steps_per_epoch
            batches = iter(self.train_loader)
            for _ in range(min(epoch_steps, self.total_steps - self.progress.step)):
                start = time.perf_counter()
                for _ in range(self.accumulation):
                    images, targets = next(batches)  # uint8, finished on the device by step_fn
                    micro = self.progress.micro_step
                    every_rank = self.sampler.assignment(micro)  # seeded: the union to reduce
                    self.step_fn(images, targets, self.sampler.sample(micro), every_rank, window)
                    self.progress.micro_step += 1
                    self.progress.samples += len(targets) * self.world
                self.progress.step += 1
                window.tick(time.perf_counter() - start)
                self._after_step(window)
            del batches
            if self.progress.step % self.steps_per_epoch == 0:
                self.progress.epoch += 1
        self._finish()

    def _after_step(self, window: _Window) -> None:
        cfg, step = self.cfg, self.progress.step
        last = step == self.total_steps
        evaluate = bool(cfg.eval.every_steps) and step % cfg.eval.every_steps == 0 and not last
        # An evaluation is followed by a checkpoint, so its metrics reach Ray Tune with one.
        save = step % cfg.run.checkpoint_every_steps == 0 or last or evaluate
        if not (save or step % cfg.run.log_every_steps == 0):
            return
        metrics = self._metrics(window)  # all ranks take part: the all-reduce happens at the same steps
        window.reset()
        if evaluate:
            metrics.update(self.evaluate(f"step-{step:06d}", cfg.eval.configs, cfg.eval.max_shards))
        if save:
            self.checkpoint(metrics)
        else:
            self.ctx.report(metrics)

    def _finish(self) -> None:
        """Every config on the full validation set, after the final checkpoint fixed the weights
        (a restart during this evaluation resumes it with the same weights, skipping recorded shards)."""
        if not self.cfg.eval.final:
            return
        # Restored from the final checkpoint: the recorded shards came from these weights. Otherwise
        # this attempt trained, and every shard is evaluated again (replacing older records).
        summary = self.evaluate("final", "all", None, skip_recorded=self.restored_step == self.total_steps)
        if summary:
            shown = ", ".join(f"{k}={v:.2f}" for k, v in summary.items() if isinstance(v, float))
            self._log(f"final evaluation (top-1 %): {shown}")
            self.ctx.report({"step": self.progress.step, "final": True, **summary})

    # -- metrics, checkpoints -----------------------------------------------------------------------
    def _metrics(self, window: _Window) -> dict[str, Any]:
        from snnet_ray.train.samplers import all_reduce_counts

        # On the worker's device: NCCL serves CUDA tensors only (float64 is fine for both backends).
        # The loss never left the device between log steps; this `.tolist()` is the window's one sync.
        counts = torch.tensor([window.images, window.seconds, window.steps], dtype=torch.float64, device=self.device)
        stats = torch.cat([window.loss_tensor.to(self.device).reshape(1), counts])
        loss_sum, images, seconds, steps = collectives.all_reduce(stats, device=self.device).tolist()
        seconds /= self.world  # every rank timed the same steps
        metrics = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "samples": self.progress.samples,
            "loss": loss_sum / max(images, 1),
            "lr": self.engine.get_lr()[0],
            "images_per_s": images / seconds if seconds else 0.0,
            "step_time_s": seconds / max(steps / self.world, 1),
            "config_counts": all_reduce_counts(self.sampler.counts, device=self.device),
            "data_skipped": self.train_loader.skipped,
        }
        if self.device.type == "cuda":  # the caching allocator's counter: a host read, no device sync
            metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.rank == 0:
            self._log(
                f"step {metrics['step']}/{self.total_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.3g} "
                f"{metrics['images_per_s']:.0f} img/s"
            )
        return metrics

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        """Every rank writes its share of the resharding checkpoint (checkpoint.py); rank 0 alone
        copies the assembled weights to the CPU and writes the whole SNNet (`model/`)."""
        from snnet_ray.stitching.saving import save_snnet
        from snnet_ray.train.checkpoint import save_checkpoint

        def write(directory: Path) -> None:
            state = save_checkpoint(self.engine, self.states, directory, device=self.device)
            if self.rank == 0:
                cpu = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
                save_snnet(self.model, directory / "model", state_dict=cpu, extra={"step": self.progress.step})

        self.ctx.report_checkpoint(metrics, f"step_{self.progress.step:08d}", write)

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        import deepspeed

        params = list(self.snnet.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.cfg.deepspeed.zero_stage == 3):
            return {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.snnet.state_dict().items()}

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self, name: str, configs: Any, max_shards: int | None, skip_recorded: bool = False
    ) -> dict[str, Any]:
        """Evaluate `configs` on the validation shards and record them as checkpoint `name`.

        Records are keyed by (run, name, config, shard), so evaluating again replaces them.
        `skip_recorded` skips shards already recorded for every config: right only when those
        records came from these very weights (a restart during the final evaluation).
        Returns a top-1 summary (%) of the evaluated configs.
        """
        from snnet_ray.data import build_val_loader, read_info
        from snnet_ray.eval.distributed import pending_shards
        from snnet_ray.eval.evaluator import evaluate_shards, to_records
        from snnet_ray.results.pareto import frontier_auc

        if self.results is None:
            return {}
        ids = self._config_ids(configs)
        shards = list(read_info(self.cfg.data.root).split(self.cfg.data.val_split).filenames)[:max_shards]
        if skip_recorded and self.rank == 0:
            shards = pending_shards(self.results, self.run, name, shards, len(ids))
        todo = collectives.broadcast_json(shards, src=0, device=self.device)  # every rank splits the same list
        model = self._model_for_eval()
        if todo:
            data_cfg = self.cfg.data.replace(val_batch_size=self.cfg.eval.batch_size or self.cfg.data.eval_batch_size)
            loader = build_val_loader(data_cfg, rank=self.rank, world_size=self.world, shards=todo)
            worker = f"rank{self.rank}"
            for shard in evaluate_shards(model, loader, config_ids=ids, device=self.device):
                self.results.ingest(to_records(self.run, name, shard, worker=worker))
        collectives.barrier(self.device)
        table = self.results.table(self.run, name)
        rows = [r for r in table.rows if r.top1 is not None and r.config_id in set(ids)]
        if not rows:
            return {}
        top1 = [r.top1 for r in rows]
        summary: dict[str, Any] = {
            "eval_checkpoint": name,  # where the sweep's report bridge reads the per-config table
            "eval_top1_mean": sum(top1) / len(top1),
            "eval_top1_min": min(top1),
            "eval_top1_max": max(top1),
        }
        # The sweep objective over this family's anchors (snnet_ray.tune.objective): mean best top-1
        # within a GMACs budget, budgets from the smallest anchor's GMACs to the largest one's.
        anchors = [r.gmacs for r in table.rows if r.kind == "anchor" and r.gmacs is not None]
        auc = frontier_auc(rows, min(anchors), max(anchors)) if anchors else None
        if auc is not None:
            summary["eval_frontier_auc"] = auc
        return summary

    def _model_for_eval(self) -> torch.nn.Module:
        """The SNNet itself (ZeRO 0-2), or a full copy (ZeRO-3 shards parameters across ranks)."""
        if self.cfg.deepspeed.zero_stage != 3:
            return self.snnet
        if self._eval_copy is None:
            torch.manual_seed(0)
            self._eval_copy = _build_model(dataclasses.replace(self.cfg, model=_without_weights(self.cfg.model)))
        self._eval_copy.load_state_dict(self._full_state_dict())
        return self._eval_copy.to(self.device, self.dtype)

    def _config_ids(self, configs: Any) -> list[int]:
        from snnet_ray.eval.select import resolve_eval_configs

        return resolve_eval_configs(self.model, configs)

    # -- helpers ------------------------------------------------------------------------------------
    def _train_loader(self, seed_offset: int):
        from snnet_ray.data import build_train_loader

        data_cfg = self.cfg.data if not seed_offset else self.cfg.data.replace(seed=self.cfg.data.seed + seed_offset)
        return build_train_loader(data_cfg, rank=self.rank, world_size=self.world, epoch=self.progress.epoch)

    def _warn_on_new_global_batch(self) -> None:
        """A run resumed on another number of workers without a fixed `deepspeed.global_batch_size`
        trains on a new global batch: steps per epoch, the lr scaled to the batch and the schedule's
        length follow it. Say so, with the setting that keeps the run's schedule."""
        step, samples = self.progress.step, self.progress.samples
        if step <= 0 or samples % step:
            return
        before, now = samples // step, self.cfg.deepspeed.global_batch(self.world)
        if before != now:
            import logging

            logging.getLogger("snnet_ray.train").warning(
                f"resumed with a global batch of {now} images ({self.world} workers), the run so far trained "
                f"with {before}: steps per epoch, the peak lr scaled to the batch and the schedule's length "
                f"follow the new batch. To continue the run's schedule, set deepspeed.global_batch_size={before} "
                "(gradient accumulation makes up for fewer workers)"
            )

    def _least_squares_init(self) -> None:
        """Solve the stitching layers from the first training images (no augmentation): the same
        batch on every rank, a deterministic float64 solve, so every rank gets the same weights."""
        from snnet_ray.data import build_val_loader
        from snnet_ray.stitching import least_squares_init

        n = self.cfg.model.ls_init_images
        data_cfg = self.cfg.data.replace(val_split=self.cfg.data.train_split, val_batch_size=n, num_workers=0)
        images = []
        for batch in build_val_loader(data_cfg, rank=0, world_size=1):
            images.append(batch.images)
            if sum(len(i) for i in images) >= n:
                break
        batch = torch.cat(images)[:n].to(self.device)
        start = time.perf_counter()
        residuals = least_squares_init(self.model, batch)
        mean = sum(residuals.values()) / max(len(residuals), 1)
        self._log(
            f"least-squares init of {len(residuals)} stitching layers from {len(batch)} images: "
            f"mean relative residual {mean:.3f} ({time.perf_counter() - start:.1f} s)"
        )

    def _log(self, message: str) -> None:
        if self.rank == 0:
            log.info(message)


_Window = StepWindow  # loss summed on the device; read at log steps only (train/step.py)


def configure_worker_logging(rank: int) -> None:
    """One `[snnet-ray]` line per message from rank 0, to stdout only.

    The logger does not propagate: Ray Train v2 hooks the root logger and print() of its workers, and
    a message through both reached the job's log twice. Other ranks log warnings and errors only.
    """
    import sys

    logger = logging.getLogger("snnet_ray")
    if not any(getattr(h, "_snnet", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[snnet-ray] %(message)s"))
        handler._snnet = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def _build_model(cfg: ExperimentConfig):
    from snnet_ray.stitching import SNNet
    from snnet_ray.train.launch import local_weights

    m = cfg.model
    model = SNNet.from_timm(
        m.anchors,
        kernel_size=m.kernel_size,
        stride=m.stride,
        nearest=m.nearest,
        rule=m.rule,
        final_norm=m.final_norm,
        lora_r=m.lora_r,
        lora_alpha=m.lora_alpha,
        pretrained=local_weights(m.pretrained),
        **m.timm_kwargs,
    )
    if m.drop_path_schedule == "uniform":
        from snnet_ray.anchors import uniform_drop_path

        for anchor, spec in zip(model.anchors, m.anchors):
            kwargs = {} if isinstance(spec, str) else spec[1]
            uniform_drop_path(anchor, float(kwargs.get("drop_path_rate", m.timm_kwargs.get("drop_path_rate", 0.0))))
    return model


def _without_weights(model_cfg):
    return dataclasses.replace(model_cfg, pretrained=False)
