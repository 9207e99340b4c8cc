"""snnet-ray: Stitchable Neural Networks (SN-Net) trained on Ray with DeepSpeed."""

from snnet_ray.stitching import ConfigCost, SNNet, StitchConfig, least_squares_init

__all__ = ["ConfigCost", "SNNet", "StitchConfig", "least_squares_init"]
__version__ = "0.1.0"
