"""Stitching: the stitch spaces (v1, SN-Netv2), stitching layers and their least-squares init, SNNet, costs."""

from snnet_ray._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "ConfigCost": ".cost",
        "measure_latency": ".cost",
        "ConvStitch": ".layers",
        "LinearStitch": ".layers",
        "LoRAStitch": ".layers",
        "fold_stitching_layer": ".layers",
        "make_stitching_layer": ".layers",
        "least_squares_init": ".least_squares",
        "solve_least_squares": ".least_squares",
        "SNNet": ".snnet",
        "load_snnet": ".saving",
        "save_snnet": ".saving",
        "FINAL_NORM_MODES": ".snnet",
        "import_official": ".official",
        "list_rules": ".space",
        "register_rule": ".space",
        "SpaceBuilder": ".space",
        "StitchConfig": ".space",
        "StitchLayerSpec": ".space",
        "build_stitch_space": ".space",
        "window_positions": ".space",
        "RouteConfig": ".space_v2",
        "build_snnetv2_space": ".space_v2",
        "official_v2_id": ".space_v2",
    },
)
