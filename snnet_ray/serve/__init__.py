"""Elastic serving: one SN-Net on Ray Serve, the config chosen per batch to hold a latency SLO.

    snnet-ray serve --model DIR --results URL --run RUN --slo-ms 50

`policy` (the pure adaptive policy), `latency` (the per-device latency table), `images` (safe
decoding), `model` (the served SNNet and its frontier), `app` (FastAPI ingress and Serve deployment).
Importing this package imports neither torch nor Ray.
"""

from snnet_ray._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "APP_NAME": ".app",
        "ElasticSNNet": ".app",
        "ServeOptions": ".options",
        "build_app": ".app",
        "create_app": ".app",
        "LatencyTable": ".latency",
        "measure_latency_table": ".latency",
        "store_latency_table": ".latency",
        "ServedModel": ".model",
        "load_served_model": ".model",
        "Decision": ".policy",
        "FrontierConfig": ".policy",
        "Pending": ".policy",
        "PolicyConfig": ".policy",
        "PolicyState": ".policy",
        "choose_config": ".policy",
    },
)
