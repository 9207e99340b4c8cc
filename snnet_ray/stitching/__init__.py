"""Stitching: the stitch space, stitching layers and their least-squares init, SNNet, costs."""

from snnet_ray.stitching.cost import ConfigCost, measure_latency
from snnet_ray.stitching.layers import ConvStitch, LinearStitch, make_stitching_layer
from snnet_ray.stitching.least_squares import least_squares_init, solve_least_squares
from snnet_ray.stitching.snnet import SNNet
from snnet_ray.stitching.space import StitchConfig, StitchLayerSpec, build_stitch_space, window_positions

__all__ = [
    "ConfigCost",
    "ConvStitch",
    "LinearStitch",
    "SNNet",
    "StitchConfig",
    "StitchLayerSpec",
    "build_stitch_space",
    "least_squares_init",
    "make_stitching_layer",
    "measure_latency",
    "solve_least_squares",
    "window_positions",
]
