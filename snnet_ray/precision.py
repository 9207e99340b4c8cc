"""One precision policy for training, evaluation and the benchmarks.

    policy = PrecisionPolicy.for_device("cuda")      # bf16 weights, fp32 gradient reduction
    ds_config.update(policy.deepspeed_section())     # what DeepSpeed trains with
    model = policy.cast_model(model)                 # what evaluation and benchmarks run
    logits = model(policy.cast_input(images))

**The choice: bf16 weights, not autocast over fp32 weights.** DeepSpeed's bf16 mode keeps the
module's weights (and so its activations and gradients) in bf16 and the fp32 master weights and
optimizer states inside the (ZeRO) optimizer. That is what trains, so it is also what evaluation
and the benchmarks run: the benchmarked path is the trained path, and a figure measured on one
holds for the other. Against autocast over fp32 weights it also (1) reads half the weight bytes
per forward and backward instead of re-casting every fp32 weight to bf16 on each call (an extra
read and write of every weight per step: ~0.5 GB for the 118 M-parameter DeiT-Ti/S/B family),
(2) halves the gradient bytes that leave the backward pass, and (3) loses nothing the optimizer
needs, because the update is applied to the fp32 master copy. Normalisation and softmax kernels
accumulate in fp32 internally either way. The one place bf16 hurts is summing gradients over many
ranks (a ring sum in bf16 errs ~0.4% at 8 ranks, ~0.8% at 64, against ~0.2% in fp32), so the
reduction runs in fp32 by default (`reduce_dtype`, DeepSpeed's `communication_data_type`).

CPUs (tests, the demo) train in fp32: bf16 matmuls there are slow and DeepSpeed's CPU bf16 support
is partial. Counts and losses are always taken from fp32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["PrecisionPolicy"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PrecisionPolicy:
    """Weights (and compute) dtype and gradient-reduction dtype of a run on one kind of device."""

    param_dtype: torch.dtype = torch.float32
    """Dtype of the module's weights, activations and gradients."""
    reduce_dtype: torch.dtype = torch.float32
    """Dtype gradients are summed across ranks in."""

    @classmethod
    def for_device(
        cls, device_type: str | torch.device, bf16: bool = True, reduce_dtype: str = "fp32"
    ) -> PrecisionPolicy:
        """The policy on `device_type`: bf16 weights on GPUs when `bf16`, fp32 on CPUs.

        `reduce_dtype` is 'fp32' (default, exact-ish sums over many ranks) or 'bf16' (half the bytes).
        """
        if reduce_dtype not in _DTYPES:
            raise ValueError(f"reduce_dtype must be one of {sorted(_DTYPES)}, got {reduce_dtype!r}")
        kind = torch.device(device_type).type if not isinstance(device_type, str) else device_type.split(":")[0]
        low = bf16 and kind != "cpu"
        param = torch.bfloat16 if low else torch.float32
        return cls(param_dtype=param, reduce_dtype=_DTYPES[reduce_dtype] if low else torch.float32)

    @property
    def bf16(self) -> bool:
        return self.param_dtype == torch.bfloat16

    def deepspeed_section(self) -> dict[str, Any]:
        """The DeepSpeed config keys this policy sets (bf16 mode and the communication dtype)."""
        section: dict[str, Any] = {"bf16": {"enabled": self.bf16}}
        if self.bf16:
            # bf16 has fp32's exponent range: no loss scale, nothing to overflow; DeepSpeed's check
            # would read a flag back from the GPU (a host sync) at every optimizer step.
            section["bf16"]["check_grad_overflow"] = False
            section["communication_data_type"] = "fp32" if self.reduce_dtype == torch.float32 else "bf16"
        return section

    def cast_model(self, model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
        """`model` with the policy's weights dtype (and on `device`), as training holds it."""
        return model.to(device=device, dtype=self.param_dtype)

    def cast_input(self, images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """Images in the weights' dtype (on `device`, without waiting for the copy)."""
        return images.to(device=device, dtype=self.param_dtype, non_blocking=True)

    def describe(self) -> str:
        name = "bf16 weights" if self.bf16 else "fp32"
        return f"{name}, {'fp32' if self.reduce_dtype == torch.float32 else 'bf16'} gradient reduction"
