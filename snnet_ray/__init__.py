"""snnet-ray: Stitchable Neural Networks (SN-Net) trained on Ray with DeepSpeed.

Public names load lazily, so the `snnet-ray` command and the results service start fast.
"""

from snnet_ray._lazy import lazy_exports

__version__ = "0.1.0"
__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "ConfigCost": ".stitching",
        "SNNet": ".stitching",
        "StitchConfig": ".stitching",
        "least_squares_init": ".stitching",
    },
)
