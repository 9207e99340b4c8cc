"""One SN-Net training micro-step that never waits for the device.

    step = TrainStep(engine, criterion, device, precision, finish=DeviceFinisher(...))
    window = StepWindow()
    for micro in ...:
        step(images, labels, sampler.sample(micro), sampler.assignment(micro), window)
    metrics = window.read()          # the one device sync, at log steps only

A GPU at 2.6-5.3 k images/s finishes a step in 20-50 ms; a host that reads a loss (`float(loss)`,
`.item()`, `bool(t)`) after each micro-step waits for it every time and can never queue the next
step's kernels ahead. So the loss is summed on the device, batches are finished on the device
(`snnet_ray.data.device`), and nothing is read back until a log step.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from snnet_ray.precision import PrecisionPolicy
from snnet_ray.train.engine import optimizer_step, select

__all__ = ["StepWindow", "TrainStep"]


class StepWindow:
    """Loss and throughput since the last metrics report (this rank): loss on the device."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._loss: torch.Tensor | float = 0.0
        self.images, self.seconds, self.steps = 0, 0.0, 0

    def add(self, loss: torch.Tensor, images: int) -> None:
        """Add a micro-batch's mean loss (a device tensor; no sync)."""
        self._loss = loss.detach().to(torch.float64) * images + self._loss
        self.images += images

    def tick(self, seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1

    @property
    def loss_tensor(self) -> torch.Tensor:
        """The summed loss as a float64 device tensor (for an all-reduce without a host round trip)."""
        if isinstance(self._loss, torch.Tensor):
            return self._loss
        return torch.tensor(float(self._loss), dtype=torch.float64)

    @property
    def loss_sum(self) -> float:
        """The summed loss on the host: reading it waits for the device (log steps only)."""
        return float(self._loss)


class TrainStep:
    """Finish a batch on the device, select this rank's config, forward, backward, `engine.step()`."""

    def __init__(
        self,
        engine: Any,
        criterion: Callable[..., torch.Tensor],
        device: torch.device,
        precision: PrecisionPolicy,
        finish: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.engine, self.criterion, self.device = engine, criterion, device
        self.precision, self.finish = precision, finish

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        config_id: Hashable,
        every_rank: Sequence[Hashable] | None,
        window: StepWindow,
    ) -> bool:
        """One micro-step; True when the optimizer stepped. Queues work, never reads it back."""
        if self.finish is not None:
            images, targets = self.finish(images, targets)
        images = self.precision.cast_input(images, self.device)
        targets = targets.to(self.device, non_blocking=True)
        select(self.engine, config_id, every_rank)
        loss = self.criterion(self.engine(images), targets, images)
        self.engine.backward(loss)
        stepped = optimizer_step(self.engine)
        window.add(loss, len(images))
        return stepped
