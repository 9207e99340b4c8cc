"""The results service as a Ray Serve application, deployed once per cluster and found by name.

Training jobs, evaluation workers and Tune trials call `ensure_results_service(db_url=...)`: the
first one deploys the application (FastAPI ingress over a `ResultsStore`), later ones find it by
name and get its URL without redeploying. Its replica reserves no CPU, so it never holds back
training. Serve's HTTP proxy listens on `host:port`; on a multi-node cluster pass
`host="0.0.0.0"` so workers on other nodes can reach it (the URL then names a proxy's node IP),
and use a database every replica can reach (PostgreSQL, or SQLite on the head node's disk).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from ray import serve

from snnet_ray.results.app import SERVICE_NAME, create_app
from snnet_ray.results.retry import NotYet, retry
from snnet_ray.results.store import DEFAULT_DB_URL, ResultsStore, normalize_db_url

__all__ = [
    "DEFAULT_HTTP_PORT",
    "ResultsService",
    "connect_for_job",
    "ensure_results_service",
    "find_results_service",
    "shutdown_results_service",
]

DEFAULT_HTTP_PORT = 8000


# Pinned to the head node: a SQLite file lives on the head's disk, and worker nodes come and go
# (autoscaling, failures) while the head stays.
@serve.deployment(
    ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
    max_ongoing_requests=64,
)
@serve.ingress()
class ResultsService:
    """Serve replica holding one store; the FastAPI app is built on the replica."""

    def __init__(self, db_url: str, token: str | None = None):
        self._store = ResultsStore(db_url)
        self._token = token

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self._store, token=self._token)


def ensure_results_service(
    db_url: str | os.PathLike[str] = DEFAULT_DB_URL,
    *,
    name: str = SERVICE_NAME,
    token: str | None = None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_HTTP_PORT,
    timeout_s: float = 120.0,
) -> str:
    """URL of the results application `name`, deploying it first when it is not running.

    `host`/`port` start Serve's HTTP proxy when Serve is not running yet; a running Serve keeps its
    own (the URL returned is always the real one). Ray must be initialized. Call it once from the
    driver before starting workers; workers then find the service with `connect()`.
    """
    _require_ray()
    url = find_results_service(name, timeout_s=timeout_s)
    if url is not None:
        return url
    # Resolve relative SQLite paths here: the replica runs in another working directory.
    db_url = normalize_db_url(db_url)
    serve.start(http_options={"host": host, "port": port})
    serve.run(ResultsService.bind(db_url, token), name=name, route_prefix=f"/{name}")
    url = find_results_service(name, timeout_s=timeout_s)
    if url is None:
        raise RuntimeError(f"deployed the results application {name!r} but Serve does not report it running")
    _wait_healthy(url, timeout_s)
    return url


def connect_for_job(
    url: str | os.PathLike[str] | None = None,
    *,
    db_url: str | os.PathLike[str] = DEFAULT_DB_URL,
    token: str | None = None,
    port: int = DEFAULT_HTTP_PORT,
) -> Any:
    """The results a job writes to: `url`, else $SNNET_RESULTS_URL, else the cluster's Serve app.

    On a Ray cluster with neither set, the results application is deployed (over `db_url`) when
    it is not running yet, so every job and worker of the cluster shares one service. Without
    Ray, `db_url` is used directly in this process.
    """
    import ray

    from snnet_ray.results.client import ENV_URL, connect

    if url is not None or os.environ.get(ENV_URL):
        return connect(url, token=token)
    if ray.is_initialized():
        return connect(ensure_results_service(db_url, token=token, port=port), token=token)
    return connect(normalize_db_url(db_url))


def find_results_service(name: str = SERVICE_NAME, timeout_s: float = 60.0) -> str | None:
    """URL of the running results application `name`, or None when there is none."""
    _require_ray()

    def running() -> str | None:
        details = _serve_details()
        app = details.applications.get(name) if details else None
        if app is None:
            return None
        status = str(getattr(app.status, "value", app.status))
        if status == "RUNNING":
            return _app_url(details, app.route_prefix or f"/{name}")
        if status in ("DEPLOYING", "NOT_STARTED"):
            raise NotYet(status)
        return None

    try:
        return retry(running, timeout_s=timeout_s, backoff=0.5, factor=1.0)
    except NotYet:
        return None


def shutdown_results_service(name: str = SERVICE_NAME) -> None:
    """Delete the results application (the database is kept)."""
    _require_ray()
    if _serve_details() is not None:
        serve.delete(name)


# ---- helpers -------------------------------------------------------------------------------


def _require_ray() -> None:
    import ray

    if not ray.is_initialized():
        raise ValueError("Ray is not initialized: call ray.init() (or run inside a Ray job) first")


def _serve_details() -> Any:
    # Serve offers no public call for the proxy address and route prefixes; its controller does.
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return ServeInstanceDetails(**client.get_serve_details())


def _app_url(details: Any, route_prefix: str) -> str:
    import ray

    host = details.http_options.host if details.http_options else "127.0.0.1"
    port = details.http_options.port if details.http_options else DEFAULT_HTTP_PORT
    if host in ("0.0.0.0", "::", ""):
        here = ray.util.get_node_ip_address()
        ips = [p.node_ip for p in details.proxies.values() if p.node_ip]
        host = here if here in ips or not ips else ips[0]
    elif host == "localhost":
        host = "127.0.0.1"
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def _wait_healthy(url: str, timeout_s: float) -> None:
    def healthy() -> None:
        if httpx.get(f"{url}/healthz", timeout=5.0).status_code != 200:
            raise NotYet("not healthy yet")

    try:
        retry(healthy, on=(NotYet, httpx.TransportError), timeout_s=timeout_s, backoff=0.25, factor=1.0)
    except (NotYet, httpx.TransportError) as err:
        raise ConnectionError(f"results service at {url} gave no /healthz answer in {timeout_s:.0f}s: {err}") from None
