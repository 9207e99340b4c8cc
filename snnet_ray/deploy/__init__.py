"""Deployment: pick a config by budget from the results service, export it as a standalone model."""

from snnet_ray._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "RouteNetwork": ".network",
        "StitchedNetwork": ".network",
        "extract_config": ".network",
        "prune_anchor": ".network",
        "ExportSummary": ".export",
        "export_config": ".export",
        "load_exported": ".export",
        "checkpoint_path": ".select",
        "select_config": ".select",
    },
)
