"""The DeepSpeed config of an SN-Net run, built from a typed config and checked before any worker starts.

    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=128, global_batch_size=1024)
    ds.check_sampler("balanced")                    # ZeRO-3 needs the synchronized sampler
    config = ds.to_dict(world_size=8, device_type="cuda")
    engine, *_ = deepspeed.initialize(model=snnet, optimizer=adamw, config=config)

ZeRO stages 0-2 keep every parameter on every rank, so ranks may train different stitch configs
in the same step (the trainer makes unused parameters' gradients explicit zeros, see
`snnet_ray.train.engine`). ZeRO-3 gathers parameters module by module as the forward reaches
them, so every rank must run the same path each micro-step: it requires a synchronized sampler.
bf16 is used on GPUs only; CPU runs (tests, the demo) train in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snnet_ray.train.samplers import is_synchronized

__all__ = ["DeepSpeedConfig"]


@dataclass
class DeepSpeedConfig:
    """How DeepSpeed wraps the SN-Net: ZeRO stage, precision, batch split, clipping."""

    zero_stage: int = 0
    """0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters; synchronized sampler)."""
    micro_batch_size: int = 32
    """Images per rank per forward/backward pass."""
    global_batch_size: int | None = None
    """Images per optimizer step over all ranks; None derives it from the other two."""
    gradient_accumulation_steps: int | None = None
    """Micro-steps per optimizer step; None derives it from the global batch (else 1)."""
    gradient_clipping: float = 0.0
    """Clip the global gradient norm to this value; 0 disables."""
    bf16: bool = True
    """bf16 weights and compute on GPUs; ignored on CPU (fp32)."""
    reduce_bucket_size: int = 500_000_000
    """Elements per gradient all-reduce bucket (ZeRO 1-2)."""
    overlap_comm: bool = False
    """Overlap gradient reduction with the backward pass (ZeRO 1-3)."""
    steps_per_print: int = 1_000_000
    """DeepSpeed's own progress log; the trainer reports metrics through Ray instead."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.micro_batch_size < 1:
            raise ValueError(f"deepspeed.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps < 1:
            raise ValueError(
                f"deepspeed.gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}"
            )
        if self.gradient_clipping < 0:
            raise ValueError(f"deepspeed.gradient_clipping must be >= 0, got {self.gradient_clipping}")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step; raises ValueError when the batch sizes do not divide."""
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps or 1
        if self.global_batch_size % per_step:
            raise ValueError(
                f"deepspeed.global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size x workers = {self.micro_batch_size} x {world_size} = {per_step}; "
                "change global_batch_size, micro_batch_size or the number of workers"
            )
        steps = self.global_batch_size // per_step
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps != steps:
            raise ValueError(
                f"deepspeed.global_batch_size={self.global_batch_size} needs gradient_accumulation_steps={steps} "
                f"with micro_batch_size={self.micro_batch_size} on {world_size} workers, but "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}; set one of them to null"
            )
        return steps

    def global_batch(self, world_size: int) -> int:
        return self.micro_batch_size * world_size * self.accumulation_steps(world_size)

    def check_sampler(self, sampler_name: str) -> None:
        """ZeRO-3 needs every rank on the same path each micro-step: refuse any other sampler."""
        if self.zero_stage == 3 and not is_synchronized(sampler_name):
            raise ValueError(
                f"deepspeed.zero_stage=3 requires sampler.name='synchronized' (ZeRO-3 gathers parameters "
                f"module by module, so every rank must run the same config), got sampler.name={sampler_name!r}; "
                "use the synchronized sampler or ZeRO stage 0-2"
            )

    def to_dict(self, world_size: int, device_type: str = "cpu", torch_optimizer: bool = True) -> dict[str, Any]:
        """The DeepSpeed config dict for `world_size` ranks on `device_type` ('cpu' or 'cuda').

        `torch_optimizer`: the optimizer is a torch optimizer passed to `deepspeed.initialize`
        (AdamW with the SN-Net's parameter groups), which ZeRO accepts only when told to.
        """
        accumulation = self.accumulation_steps(world_size)
        zero: dict[str, Any] = {"stage": self.zero_stage}
        if self.zero_stage > 0:
            zero.update(reduce_bucket_size=self.reduce_bucket_size, overlap_comm=self.overlap_comm)
        if self.zero_stage == 3:
            zero.update(stage3_prefetch_bucket_size=self.reduce_bucket_size)
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "train_batch_size": self.micro_batch_size * accumulation * world_size,
            "gradient_clipping": self.gradient_clipping,
            "zero_optimization": zero,
            "bf16": {"enabled": self.bf16 and device_type != "cpu"},
            "steps_per_print": self.steps_per_print,
            "wall_clock_breakdown": False,
        }
        if torch_optimizer:
            config["zero_allow_untested_optimizer"] = True
        return config
