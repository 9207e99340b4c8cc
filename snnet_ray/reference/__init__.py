"""Reference data shipped with the package: the published per-config results of SN-Net releases."""

from snnet_ray.reference.published import PublishedConfig, PublishedResults, list_published, load_published

__all__ = ["PublishedConfig", "PublishedResults", "list_published", "load_published"]
