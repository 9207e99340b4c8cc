"""The DeepSpeed engine around an SN-Net, correct when ranks train different stitch configs.

SN-Net samples a config per rank and step, so in one step the ranks run different paths and
each leaves some parameters without a gradient. DeepSpeed copes with that differently per stage
(measured on deepspeed 0.19.8, 2 ranks, gloo):

- ZeRO-0 all-reduces every parameter in a fixed order and fills missing gradients with zeros:
  correct as is.
- ZeRO-1/2 reduce gradients in the order their hooks fire during the backward pass, bucket by
  bucket. Different paths fire in different orders and leave different parameters out, so the
  ranks' collectives do not match: a crash ('Received data size doesn't match expected size'),
  or, when every parameter has a gradient but the order differs, parameters that stay identical
  across ranks but were updated with mixed-up gradients.
- ZeRO-3 gathers parameters module by module during the forward pass: ranks must run the same
  path, so it requires the synchronized sampler (`DeepSpeedConfig.check_sampler`). It also keeps
  a parameter's gradient partition from the last step that used it and applies it again at
  every later step that does not (the partitions are overwritten only for parameters that get a
  gradient): `optimizer_step` zeroes them after each optimizer step.

For ZeRO-1/2 with per-rank configs the model is wrapped in `OrderedGradients`: the forward pass
reads every parameter through one autograd node, whose backward hands all gradients (zeros for
the parameters this rank's path did not use) to the parameters at once, in the model's
parameter order. Every rank then reduces the same tensors in the same order; the result is
exactly the average of the ranks' gradients (tested against a single-process reference).

    engine = build_engine(snnet, optimizer, scheduler, DeepSpeedConfig(zero_stage=2), synchronized=False)
    unwrap(engine).select(cfg_id)           # the SNNet inside
    loss = criterion(engine(images), targets, images)
    engine.backward(loss)
    optimizer_step(engine)                  # engine.step(); True when the optimizer stepped
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from snnet_ray.train.deepspeed_config import DeepSpeedConfig

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

__all__ = [
    "OrderedGradients",
    "build_engine",
    "device_type",
    "needs_ordered_gradients",
    "optimizer_step",
    "unwrap",
]


def needs_ordered_gradients(zero_stage: int, synchronized: bool) -> bool:
    """Whether ranks on different paths need `OrderedGradients` (ZeRO-1/2 with a per-rank sampler)."""
    return zero_stage in (1, 2) and not synchronized


def build_engine(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: DeepSpeedConfig,
    synchronized: bool,
    world_size: int | None = None,
) -> DeepSpeedEngine:
    """`deepspeed.initialize` with the DeepSpeed config of `config` for this cluster.

    Call inside a Ray Train worker (torch.distributed is already initialised there; DeepSpeed
    reuses its process group). `synchronized` says whether all ranks run the same config each
    micro-step (the sampler's `synchronized`); ZeRO-3 requires it. The scheduler is stepped by
    the engine after every optimizer step and saved in its checkpoints.
    """
    import deepspeed

    from snnet_ray import collectives

    if config.zero_stage == 3 and not synchronized:
        raise ValueError(
            "deepspeed.zero_stage=3 requires a synchronized sampler (every rank on the same config); "
            "use sampler.name='synchronized' or ZeRO stage 0-2"
        )
    if world_size is None:
        world_size = collectives.world_size()
    module = OrderedGradients(model) if needs_ordered_gradients(config.zero_stage, synchronized) else model
    engine, *_ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=config.to_dict(world_size, device_type()),
    )
    return engine


def optimizer_step(engine: DeepSpeedEngine) -> bool:
    """`engine.step()` after each micro-batch's backward; True when it stepped the optimizer.

    Use it instead of `engine.step()`: under ZeRO-3 it clears the gradient partitions after the
    optimizer step, so a parameter the next steps' paths do not use gets a zero gradient instead
    of its stale one (DeepSpeed 0.19 leaves them in place).
    """
    boundary = engine.is_gradient_accumulation_boundary()
    engine.step()
    if boundary and engine.zero_optimization_stage() == 3:
        flat = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)
        if flat is None:
            raise RuntimeError(
                "this DeepSpeed version has no ZeRO-3 grad_partitions_flat_buffer; the stale-gradient "
                "fix in snnet_ray.train.engine.optimizer_step needs updating"
            )
        flat.zero_()
    return boundary


def unwrap(engine_or_module: Any) -> nn.Module:
    """The user's model inside a DeepSpeed engine and/or `OrderedGradients`."""
    module = getattr(engine_or_module, "module", engine_or_module)
    return module.model if isinstance(module, OrderedGradients) else module


def device_type() -> str:
    """'cuda', 'cpu', ...: the accelerator DeepSpeed runs on (its bf16 and comm backend follow it)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


class OrderedGradients(nn.Module):
    """Runs `model` with every parameter read through one autograd node (see the module docstring).

    State dicts are the wrapped model's own (no prefix), so DeepSpeed checkpoints load into the
    bare model and vice versa. Costs one parameter swap per forward and zero gradients for the
    parameters a path does not use (which ZeRO-1/2 need anyway).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        names, params = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                names.append(name)
                params.append(p)
        gated = _Gate.apply(*params)
        return torch.func.functional_call(self.model, dict(zip(names, gated)), args, kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


class _Gate(torch.autograd.Function):
    """Identity on parameters whose backward runs once, after the whole backward of the path.

    Its backward receives every parameter's gradient (autograd materialises zeros for the unused
    ones) and passes them on together, so the parameters' gradient hooks (where ZeRO-1/2 bucket and
    reduce) fire in the same order on every rank, whatever path each rank ran.
    """

    @staticmethod
    def forward(ctx: Any, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return grads
