"""What a replica serves and how: `ServeOptions`, the Serve deployment's `user_config`.

Changing it on a running application is a rollout: Serve hands the new options to each replica's
`reconfigure`, which loads the model they name beside the old one and swaps. Importing this module
imports neither torch nor Ray, so a Serve config file's `user_config` is checked anywhere.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from snnet_ray.serve.latency import DEFAULT_BATCH_SIZES
from snnet_ray.serve.policy import PolicyConfig

__all__ = ["ServeOptions"]


class ServeOptions(BaseModel):
    """What a replica serves and how: the deployment's `user_config` (changing it is a rollout)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=4096, description="saved SN-Net dir or training checkpoint (s3:// too)")
    results: str | None = Field(default=None, max_length=4096, description="results service or database URL")
    run: str | None = Field(default=None, max_length=200, description="run whose per-config top-1 ranks the configs")
    checkpoint: str | None = Field(default=None, max_length=200, description="evaluated checkpoint (default: latest)")
    slo_ms: float = Field(default=50.0, gt=0, le=600_000, allow_inf_nan=False)
    fixed_config: int | None = Field(default=None, ge=0, description="serve this one config (a baseline); no policy")
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="images per batch (one config each)")
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000, allow_inf_nan=False)
    max_images: int = Field(default=8, ge=1, le=256, description="images per request")
    max_body_bytes: int = Field(default=8 << 20, ge=1024, le=1 << 30)
    max_image_bytes: int = Field(default=4 << 20, ge=1024, le=1 << 30)
    max_pixels: int = Field(default=4096 * 4096, ge=64, le=1 << 28)
    latency_batch_sizes: list[int] | None = Field(
        default=None, max_length=16, description="batch sizes timed at start-up (default: 1, 2, 4, ... max_batch_size)"
    )
    headroom: float = Field(default=0.2, ge=0, lt=1)
    up_headroom: float = Field(default=0.4, ge=0, lt=1)
    up_after: int = Field(default=4, ge=1, le=10_000)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    torch_threads: int | None = Field(default=None, ge=1, le=256)

    @model_validator(mode="after")
    def _consistent(self) -> ServeOptions:
        if self.max_images > self.max_batch_size:
            raise ValueError(f"max_images ({self.max_images}) must be <= max_batch_size ({self.max_batch_size}): "
                             "a request's images run in one batch")
        if self.latency_batch_sizes is not None and not all(1 <= b <= 4096 for b in self.latency_batch_sizes):
            raise ValueError("latency_batch_sizes must lie in 1..4096")
        return self

    def batch_sizes(self) -> list[int]:
        if self.latency_batch_sizes:
            return sorted(set(self.latency_batch_sizes))
        sizes = [b for b in DEFAULT_BATCH_SIZES if b < self.max_batch_size]
        b = 32
        while b < self.max_batch_size:
            sizes.append(b)
            b *= 2
        return [*sizes, self.max_batch_size]

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            slo_ms=self.slo_ms,
            max_batch_images=self.max_batch_size,
            headroom=self.headroom,
            up_headroom=max(self.up_headroom, self.headroom),
            up_after=self.up_after,
        )
