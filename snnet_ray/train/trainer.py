"""The SN-Net trainer that runs in every Ray Train worker.

`Trainer(cfg, results_url, run)` builds its parts in a fixed order (torchtitan style):
distributed context and device, SNNet (anchor weights from files), data, loss, sampler,
optimizer and schedule, least-squares init (fresh runs only), DeepSpeed engine, checkpoint
restore; `train()` is the loop:

    for each micro-step: config = sampler.sample(micro_step); select it; forward; backward; step
    every log_every steps:        all-reduced metrics through ray.train.report
    every checkpoint_every steps: DeepSpeed checkpoint + train state + the SNNet (model/) reported
    every eval.every_steps:       one-pass evaluation of the chosen configs on the first shards
    at the end:                   final checkpoint, every config on the full validation set

Evaluations go to the results service as exact partial counts per (config, shard), keyed so
that evaluating again replaces a record instead of adding one. A restart that resumes from the
final checkpoint (the weights the final evaluation used) skips the shards already recorded.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from snnet_ray.train.config import ExperimentConfig, load_experiment

__all__ = ["Trainer", "train_loop_per_worker"]


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: `TorchTrainer(train_loop_per_worker, train_loop_config=...)`."""
    cfg = load_experiment(loop_config["experiment"])
    Trainer(cfg, results_url=loop_config.get("results_url"), run=loop_config["run"]).train()


class Trainer:
    """One worker's share of an SN-Net training run."""

    def __init__(self, cfg: ExperimentConfig, results_url: str | None, run: str) -> None:
        import ray.train
        import torch.distributed as dist

        from snnet_ray.train.checkpoint import RandomState, TrainProgress

        self.cfg, self.run, self.results_url = cfg, run, results_url
        # 1. distributed context and device
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = torch.device(
            f"cuda:{ctx.get_local_rank()}" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu"
        )
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dist = dist
        checkpoint = ray.train.get_checkpoint()

        # 2. model: identical initial weights on every rank (same seed), pretrained anchors from files
        torch.manual_seed(cfg.seed)
        self.model = _build_model(cfg).to(self.device)
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
        self.dtype = next(self.snnet.parameters()).dtype
        # 9. restore
        self.states = {"progress": self.progress, "sampler": self.sampler, "rng": RandomState()}
        self.resumed = False
        self.restored_step: int | None = None
        if checkpoint is not None:
            from snnet_ray.train.checkpoint import restore_checkpoint

            self.resumed = restore_checkpoint(self.engine, self.states, checkpoint)
            self.restored_step = self.progress.step
            # A resumed epoch draws fresh batches rather than replaying the ones already trained.
            self.train_loader = self._train_loader(seed_offset=self.progress.step)
            self.train_loader.set_epoch(self.progress.epoch)
            self._log(f"resumed at step {self.progress.step} (epoch {self.progress.epoch})")
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
        from snnet_ray.train.engine import optimizer_step

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
                    images, targets = next(batches)
                    images = images.to(self.device, self.dtype, non_blocking=True)
                    targets = targets.to(self.device, non_blocking=True)
                    self.snnet.select(self.sampler.sample(self.progress.micro_step))
                    loss = self.criterion(self.engine(images), targets, images)
                    self.engine.backward(loss)
                    optimizer_step(self.engine)
                    self.progress.micro_step += 1
                    self.progress.samples += len(images) * self.world
                    window.add(loss.detach(), len(images))
                self.progress.step += 1
                window.tick(time.perf_counter() - start)
                self._after_step(window)
            del batches
            if self.progress.step % self.steps_per_epoch == 0:
                self.progress.epoch += 1
        self._finish()

    def _after_step(self, window: _Window) -> None:
        import ray.train

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
            ray.train.report(metrics)

    def _finish(self) -> None:
        """Every config on the full validation set, after the final checkpoint fixed the weights
        (a restart during this evaluation resumes it with the same weights, skipping recorded shards)."""
        import ray.train

        if not self.cfg.eval.final:
            return
        # Restored from the final checkpoint: the recorded shards came from these weights. Otherwise
        # this attempt trained, and every shard is evaluated again (replacing older records).
        summary = self.evaluate("final", "all", None, skip_recorded=self.restored_step == self.total_steps)
        if summary:
            shown = ", ".join(f"{k}={v:.2f}" for k, v in summary.items() if isinstance(v, float))
            self._log(f"final evaluation (top-1 %): {shown}")
            ray.train.report({"step": self.progress.step, "final": True, **summary})

    # -- metrics, checkpoints -----------------------------------------------------------------------
    def _metrics(self, window: _Window) -> dict[str, Any]:
        from snnet_ray.train.samplers import all_reduce_counts

        stats = torch.tensor([window.loss_sum, window.images, window.seconds, window.steps], dtype=torch.float64)
        self.dist.all_reduce(stats)
        loss_sum, images, seconds, steps = stats.tolist()
        seconds /= self.world  # every rank timed the same steps
        metrics = {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "samples": self.progress.samples,
            "loss": loss_sum / max(images, 1),
            "lr": self.engine.get_lr()[0],
            "images_per_s": images / seconds if seconds else 0.0,
            "step_time_s": seconds / max(steps / self.world, 1),
            "config_counts": all_reduce_counts(self.sampler.counts),
            "data_skipped": self.train_loader.skipped,
        }
        if self.rank == 0:
            self._log(
                f"step {metrics['step']}/{self.total_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.3g} "
                f"{metrics['images_per_s']:.0f} img/s"
            )
        return metrics

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        """DeepSpeed checkpoint and train state on every rank, plus the whole SNNet (`model/`) from rank 0."""
        from snnet_ray.stitching.saving import save_snnet
        from snnet_ray.train.checkpoint import report_checkpoint

        state = self._full_state_dict()

        def write_model(directory: Path) -> None:
            if self.rank == 0:
                save_snnet(self.model, directory / "model", state_dict=state, extra={"step": self.progress.step})

        report_checkpoint(self.engine, self.states, metrics, f"step_{self.progress.step:08d}", extra=write_model)

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
        todo = [shards]
        self.dist.broadcast_object_list(todo, src=0)  # every rank splits the same list
        model = self._model_for_eval()
        if todo[0]:
            data_cfg = self.cfg.data.replace(val_batch_size=self.cfg.eval.batch_size or self.cfg.data.eval_batch_size)
            loader = build_val_loader(data_cfg, rank=self.rank, world_size=self.world, shards=todo[0])
            worker = f"rank{self.rank}"
            for shard in evaluate_shards(model, loader, config_ids=ids, device=self.device):
                self.results.ingest(to_records(self.run, name, shard, worker=worker))
        self.dist.barrier()
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
        if configs == "all":
            return [c.id for c in self.model.configs]
        if configs == "anchors":
            return [c.id for c in self.model.configs if c.is_anchor]
        return [int(c) for c in configs]

    # -- helpers ------------------------------------------------------------------------------------
    def _train_loader(self, seed_offset: int):
        from snnet_ray.data import build_train_loader

        data_cfg = self.cfg.data if not seed_offset else self.cfg.data.replace(seed=self.cfg.data.seed + seed_offset)
        return build_train_loader(data_cfg, rank=self.rank, world_size=self.world, epoch=self.progress.epoch)

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
        # print, not logging: Ray forwards worker stdout to the driver and the job's log as is.
        if self.rank == 0:
            print(f"[snnet-ray] {message}", flush=True)


class _Window:
    """Loss and throughput since the last metrics report (this rank)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.images, self.seconds, self.steps = 0.0, 0, 0.0, 0

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += float(loss) * images
        self.images += images

    def tick(self, seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1


def _build_model(cfg: ExperimentConfig):
    from snnet_ray.stitching import SNNet
    from snnet_ray.train.launch import local_weights

    m = cfg.model
    return SNNet.from_timm(
        m.anchors,
        kernel_size=m.kernel_size,
        stride=m.stride,
        nearest=m.nearest,
        rule=m.rule,
        lora_r=m.lora_r,
        lora_alpha=m.lora_alpha,
        pretrained=local_weights(m.pretrained),
        **m.timm_kwargs,
    )


def _without_weights(model_cfg):
    return dataclasses.replace(model_cfg, pretrained=False)
