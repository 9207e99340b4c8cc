"""The DeepSpeed config of an SN-Net run, built from a typed config and checked before any worker starts.

    ds = DeepSpeedConfig(zero_stage=2, micro_batch_size=128, global_batch_size=1024)
    ds.check_sampler("balanced")                    # ZeRO-3 needs the synchronized sampler
    config = ds.to_dict(world_size=8, device_type="cuda")
    engine, *_ = deepspeed.initialize(model=snnet, optimizer=adamw, config=config)

ZeRO stages 0-2 keep every parameter on every rank, so ranks may train different stitch configs
in the same step (the trainer makes unused parameters' gradients explicit zeros, see
`snnet_ray.train.engine`). ZeRO-3 gathers parameters module by module as the forward reaches
them, so every rank must run the same path each micro-step: it requires a synchronized sampler.
Precision follows `snnet_ray.precision.PrecisionPolicy` (bf16 weights on GPUs, fp32 on CPUs, fp32
gradient reduction): the same object evaluation and the benchmarks use. Gradient buckets are sized
to the model (a quarter of its parameters, 1-50 M elements) and overlap the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snnet_ray.precision import PrecisionPolicy
from snnet_ray.train.samplers import is_synchronized

__all__ = ["DeepSpeedConfig"]

_MIN_BUCKET, _MAX_BUCKET = 1 << 20, 50_000_000


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
    """bf16 weights and compute on GPUs; ignored on CPU (fp32). See `snnet_ray.precision`."""
    reduce_dtype: str = "fp32"
    """Dtype gradients are summed across ranks in: 'fp32' (default) or 'bf16' (half the bytes)."""
    reduce_bucket_size: int | None = None
    """Elements per gradient reduction bucket (ZeRO 1-3); None sizes it to the model (see `bucket_size`)."""
    overlap_comm: bool = True
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
        if self.reduce_dtype not in ("fp32", "bf16"):
            raise ValueError(f"deepspeed.reduce_dtype must be 'fp32' or 'bf16', got {self.reduce_dtype!r}")
        if self.reduce_bucket_size is not None and self.reduce_bucket_size < 1:
            raise ValueError(
                f"deepspeed.reduce_bucket_size must be >= 1 element (or null to size it to the model), "
                f"got {self.reduce_bucket_size}"
            )

    def precision(self, device_type: str) -> PrecisionPolicy:
        """The run's precision policy on `device_type` (training, evaluation and benchmarks share it)."""
        return PrecisionPolicy.for_device(device_type, bf16=self.bf16, reduce_dtype=self.reduce_dtype)

    def bucket_size(self, num_parameters: int | None) -> int:
        """Elements per reduction bucket: the configured size, else a quarter of the model clipped to
        1-50 M (the DeiT-Ti/S/B family's 118 M parameters give ~30 M: four buckets, so three reduce
        while the backward pass still runs, without DeepSpeed's 500 M default's 1 GB buffer)."""
        if self.reduce_bucket_size is not None:
            return self.reduce_bucket_size
        if not num_parameters:
            return _MAX_BUCKET
        size = int(min(max(num_parameters // 4, _MIN_BUCKET), _MAX_BUCKET))
        return size - size % 1024  # DeepSpeed wants bucket sizes aligned (to 2 elements at least)

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

    def to_dict(
        self,
        world_size: int,
        device_type: str = "cpu",
        torch_optimizer: bool = True,
        num_parameters: int | None = None,
    ) -> dict[str, Any]:
        """The DeepSpeed config dict for `world_size` ranks on `device_type` ('cpu' or 'cuda').

        `torch_optimizer`: the optimizer is a torch optimizer passed to `deepspeed.initialize`
        (AdamW with the SN-Net's parameter groups), which ZeRO accepts only when told to.
        `num_parameters` (trainable) sizes the reduction buckets when `reduce_bucket_size` is None.
        """
        accumulation = self.accumulation_steps(world_size)
        bucket = self.bucket_size(num_parameters)
        zero: dict[str, Any] = {"stage": self.zero_stage}
        if self.zero_stage > 0:
            zero.update(
                reduce_bucket_size=bucket,
                allgather_bucket_size=bucket + bucket % 2,  # DeepSpeed asserts an even size
                overlap_comm=self.overlap_comm,
                contiguous_gradients=True,
            )
            if self.zero_stage in (1, 2) and not self.gradient_clipping:
                # Without clipping the global norm is unused, and DeepSpeed's finiteness check of
                # it reads the device back at every optimizer step.
                zero["compute_grad_norm"] = False
        if self.zero_stage == 3:
            zero.update(stage3_prefetch_bucket_size=bucket)
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "train_batch_size": self.micro_batch_size * accumulation * world_size,
            "gradient_clipping": self.gradient_clipping,
            "zero_optimization": zero,
            **self.precision(device_type).deepspeed_section(),
            "steps_per_print": self.steps_per_print,
            "wall_clock_breakdown": False,
        }
        if torch_optimizer:
            config["zero_allow_untested_optimizer"] = True
        return config
