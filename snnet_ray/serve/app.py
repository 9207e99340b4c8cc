"""Elastic SN-Net serving on Ray Serve: one deployment, every config, the config chosen per batch.

Each replica of `ElasticSNNet` holds one SNNet with every config's weights (switching is an index
change), measures the served frontier's latency table on its own device at start-up, batches
requests with `@serve.batch`, and runs each batch with the config the adaptive policy picks
(`policy.choose_config`): the most accurate one whose predicted service time plus the queue's wait
meets the SLO and every request's own budget.

    POST /v1/classify     image/jpeg or image/png body (one image; budgets as query parameters), or
                          JSON {"images": [base64, ...], "max_gmacs", "max_latency_ms", "config", "top_k"}
                          -> top-k classes per image, the config used, its GMACs and the time spent
    GET  /v1/configs      the served frontier with this replica's measured latency table
    GET  /healthz         200 once the model is loaded (which version), 503 before

Errors: 400 undecodable image, 413 body or image too large (the body limit is enforced while the body
arrives, before any parsing), 415 other content types, 422 unknown config or impossible budget, 503
not loaded yet. A rollout is a redeploy with a new `user_config` (`model`: the new checkpoint): the
replica loads the new model beside the old one and swaps them; requests already decoded finish on
the model that decoded them, so none is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from snnet_ray.serve.images import ImageError, decode_image
from snnet_ray.serve.latency import LatencyTable, measure_latency_table, store_latency_table
from snnet_ray.serve.model import ServedModel, load_served_model
from snnet_ray.serve.options import ServeOptions
from snnet_ray.serve.policy import Decision, FrontierConfig, Pending, PolicyConfig, PolicyState, choose_config

__all__ = [
    "APP_NAME", "ClassifyRequest", "ElasticSNNet", "SNNetServer", "ServeOptions", "build", "build_app", "create_app",
]

APP_NAME = "snnet-serve"
# The arrival rate the policy plans with: images over the last RATE_WINDOW_S seconds.
RATE_WINDOW_S = 0.5
# Small images are decoded on the event loop; larger ones in a thread, so the loop keeps taking requests.
_INLINE_DECODE_BYTES = 64 << 10
log = logging.getLogger(__name__)


class ClassifyRequest(BaseModel):
    """JSON body of POST /v1/classify."""

    model_config = ConfigDict(extra="forbid")

    images: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="base64 JPEG/PNG bytes")
    max_gmacs: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    config: int | None = Field(default=None, ge=0, description="run exactly this config")
    top_k: int = Field(default=5, ge=1, le=100)


class ServeError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class _Replica:
    """Everything one loaded model needs; swapped whole on a rollout."""

    served: ServedModel
    options: ServeOptions
    table: LatencyTable
    policy: PolicyConfig
    device: Any
    state: PolicyState


@dataclass
class _Item:
    key: int
    pending: Pending
    images: Any  # tensor (n, C, H, W)
    replica: _Replica
    config: int | None
    top_k: int


def _images_in(items: list[_Item]) -> int:
    return sum(item.pending.images for item in items)


# ---- the Serve deployment -----------------------------------------------------------------------


class SNNetServer:
    """One replica's serving logic: the model, its latency table, the batch queue and the policy.

    `reconfigure(options)` loads (or rolls out) the model. Serve runs it as `ElasticSNNet` (the
    `@serve.batch` queue lives in a Serve replica); the routes of `create_app` call its public methods.
    """

    def __init__(self) -> None:
        self._replica: _Replica | None = None
        self._pending: dict[int, Pending] = {}
        self._next_key = 0
        self._load_lock = asyncio.Lock()
        self._recent: deque[dict[str, Any]] = deque(maxlen=256)
        self._arrivals: deque[tuple[float, int]] = deque()
        self._served_requests = 0

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        options = ServeOptions.model_validate(user_config)
        async with self._load_lock:
            # Loading and measuring run in a thread: the replica keeps answering with the old model.
            replica = await asyncio.to_thread(_load_replica, options)
            self._batch.set_max_batch_size(options.max_batch_size)
            self._batch.set_batch_wait_timeout_s(options.batch_wait_ms / 1e3)
            self._replica = replica
        log.info("serving %s (version %s) on %s", replica.served.model_dir, replica.served.version, replica.device)

    # -- what the HTTP routes call ---------------------------------------------------------------
    def max_body_bytes(self) -> int:
        return self._replica.options.max_body_bytes if self._replica else ServeOptions.model_fields[
            "max_body_bytes"].default

    def health(self) -> dict[str, Any]:
        replica = self._require()
        return {"status": "ok", "model": replica.served.model_dir, "version": replica.served.version,
                "device": replica.table.device, "configs": len(replica.served.frontier)}

    def configs(self) -> dict[str, Any]:
        replica = self._require()
        served, table = replica.served, replica.table
        rows = []
        for cfg in served.frontier:
            latency = {str(b): round(table.predict(cfg.id, b), 4) for b in table.batch_sizes}
            rows.append({**served.config_info(cfg.id), "latency_ms": latency,
                         "measured_ms": {str(b): round(table.measured(cfg.id, b), 4) for b in table.batch_sizes}})
        return {
            "model": served.model_dir,
            "version": served.version,
            "top1_source": served.top1_source,
            "device": table.device,
            "slo_ms": replica.options.slo_ms,
            "fixed_config": replica.options.fixed_config,
            "level": replica.state.level,
            "current": served.frontier[replica.state.level].id,
            "requests": self._served_requests,
            "configs": rows,
            "recent": list(self._recent)[-32:],
        }

    async def classify(
        self,
        images: list[bytes],
        *,
        max_gmacs: float | None,
        max_latency_ms: float | None,
        config: int | None,
        top_k: int,
        arrival: float,
    ) -> dict[str, Any]:
        replica = self._require()
        options, served = replica.options, replica.served
        if len(images) > options.max_images:
            raise ServeError(413, f"{len(images)} images in one request; the limit is {options.max_images}")
        _check_budget(replica, len(images), max_gmacs, max_latency_ms, config)
        if sum(len(b) for b in images) <= _INLINE_DECODE_BYTES:
            tensors = _decode_all(images, served, options)  # a thread hop costs more than decoding these
        else:
            tensors = await asyncio.to_thread(_decode_all, images, served, options)
        key = self._next_key
        self._next_key += 1
        self._arrivals.append((arrival, len(images)))
        pending = Pending(arrival=arrival, images=len(images), max_gmacs=max_gmacs, max_latency_ms=max_latency_ms)
        self._pending[key] = pending
        try:
            out = await self._batch(_Item(key, pending, tensors, replica, config, min(top_k, served.snnet.num_classes)))
        finally:
            self._pending.pop(key, None)
        self._served_requests += 1
        out["time_ms"]["total"] = round((time.monotonic() - arrival) * 1e3, 3)
        return out

    # -- one batch, one config per group ----------------------------------------------------------
    # Batches count images, not requests: the latency table and the policy are per image count.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005, batch_size_fn=_images_in)
    async def _batch(self, items: list[_Item]) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        # A rollout or a pinned config splits the batch: one forward per (model, config).
        groups: dict[tuple[int, int | None], list[_Item]] = {}
        for item in items:
            groups.setdefault((id(item.replica), item.config), []).append(item)
        for (_, pinned), group in groups.items():
            replica = group[0].replica
            start = time.monotonic()
            decision = self._decide(replica, group, pinned, start)
            cfg_id = decision.config.id if decision is not None else pinned
            probs, compute_ms = await asyncio.to_thread(_forward, replica, cfg_id, [i.images for i in group])
            images = sum(i.pending.images for i in group)
            replica.table.observe(cfg_id, images, compute_ms)
            info = replica.served.config_info(cfg_id)
            reason = decision.reason if decision is not None else "pinned"
            self._recent.append({"t": round(time.time(), 3), "config": cfg_id, "images": images,
                                 "compute_ms": round(compute_ms, 3), "reason": reason})
            offset = 0
            for item in group:
                n = item.pending.images
                results[item.key] = {
                    "predictions": _top_k(probs[offset : offset + n], item.top_k),
                    "config": info,
                    "reason": reason,
                    "batch_images": images,
                    "version": replica.served.version,
                    "time_ms": {"queue": round((start - item.pending.arrival) * 1e3, 3),
                                "compute": round(compute_ms, 3)},
                }
                offset += n
        return [results[item.key] for item in items]

    def _decide(self, replica: _Replica, group: list[_Item], pinned: int | None, now: float) -> Decision | None:
        if pinned is not None:
            return None
        frontier = replica.served.frontier
        fixed = replica.options.fixed_config
        if fixed is not None:
            info = replica.served.config_info(fixed)
            cfg = FrontierConfig(fixed, info["name"], info["gmacs"], info["top1"] or 0.0)
            return Decision(cfg, replica.state, replica.table.predict(fixed, 1), "fixed")
        in_group = {i.key for i in group}
        queued = [p for k, p in self._pending.items() if k not in in_group]
        while self._arrivals and self._arrivals[0][0] < now - RATE_WINDOW_S:
            self._arrivals.popleft()
        rate = sum(n for _, n in self._arrivals) / RATE_WINDOW_S
        decision = choose_config(frontier, replica.table.predict, [i.pending for i in group], queued, now,
                                 replica.state, replica.policy, rate)
        replica.state = decision.state
        return decision

    def _require(self) -> _Replica:
        if self._replica is None:
            raise ServeError(503, "the model is still loading; retry shortly")
        return self._replica


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class ElasticSNNet(SNNetServer):
    """The Serve deployment: an `SNNetServer` per replica, its FastAPI app built on the replica;
    `user_config` is `ServeOptions` (a new one is a rollout, applied by `reconfigure`)."""

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)


def build_app(
    options: ServeOptions | dict[str, Any],
    *,
    num_replicas: int | None = 1,
    autoscaling: dict[str, Any] | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> Any:
    """The Serve application: `ElasticSNNet` with `options` as its user_config.

    Give `num_replicas`, or `autoscaling` (Serve's autoscaling_config: min_replicas, max_replicas,
    target_ongoing_requests, ...). With batching, a replica works best with about a batch in flight,
    so `target_ongoing_requests` near `max_batch_size` keeps batches full without queueing past the SLO.
    """
    options = ServeOptions.model_validate(options)
    if (num_replicas is None) == (autoscaling is None):
        raise ValueError("give either num_replicas or an autoscaling config, not both")
    deployment = ElasticSNNet.options(
        user_config=options.model_dump(mode="json"),
        # Enough in flight to fill a few batches; the rest waits in Serve's proxy, not on the replica.
        max_ongoing_requests=max(4 * options.max_batch_size, 8),
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        **({"num_replicas": num_replicas} if autoscaling is None else {"autoscaling_config": autoscaling}),
    )
    return deployment.bind()


def build(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files (`import_path: snnet_ray.serve.app:build`).

    The model and its settings come from the deployment's `user_config`, so a RayService rolls out a
    new checkpoint by changing `user_config.model` alone; `args` may carry ServeOptions too.
    """
    return ElasticSNNet.options(user_config=args or None).bind()


# ---- the FastAPI app ----------------------------------------------------------------------------

_ERRORS = {
    400: {"description": "an image could not be decoded (not JPEG/PNG, truncated, corrupt), or bad base64"},
    413: {"description": "body, image or image count over the limit (the body limit is checked as it arrives)"},
    415: {"description": "content type other than image/jpeg, image/png or application/json"},
    422: {"description": "invalid field, unknown config id, or a budget no served config can meet"},
    503: {"description": "the model is still loading"},
}
_CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyRequest"}},
        },
    }
}


def create_app(server: Any) -> FastAPI:
    """The HTTP API over `server` (an `ElasticSNNet`, or anything with its methods)."""
    app = FastAPI(
        title="snnet-ray elastic serving",
        description="One SN-Net, every config; each batch runs the most accurate config that meets the SLO.",
        version="1",
    )
    app.add_middleware(_BodyLimit, limit=server.max_body_bytes)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, err: ServeError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.get("/healthz", responses={503: _ERRORS[503]})
    async def healthz() -> dict[str, Any]:
        return server.health()

    @app.get("/v1/configs", responses={503: _ERRORS[503]})
    async def configs() -> dict[str, Any]:
        """The served frontier (least accurate first) with the latency measured on this replica."""
        return server.configs()

    @app.post("/v1/classify", responses=_ERRORS, openapi_extra=_CLASSIFY_BODY)
    async def classify(
        request: Request,
        max_gmacs: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
        max_latency_ms: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
        config: Annotated[int | None, Query(ge=0)] = None,
        top_k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> dict[str, Any]:
        """Classify one image (raw JPEG/PNG body) or several (JSON with base64 images).

        Budgets: `max_gmacs` (per image), `max_latency_ms` (from arrival to answer); or `config` to run
        one config. The answer holds the top-k classes with probabilities per image, the config used
        (id, name, GMACs, top-1) and the time spent (queue, compute, total ms).
        """
        arrival = time.monotonic()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if kind in ("image/jpeg", "image/png"):
            images = [body]
        elif kind == "application/json":
            if any(v is not None for v in (max_gmacs, max_latency_ms, config)) or "top_k" in request.query_params:
                raise ServeError(422, "with a JSON body, give max_gmacs, max_latency_ms, config and top_k in the body")
            try:
                req = ClassifyRequest.model_validate_json(body)
            except ValidationError as err:
                raise ServeError(422, _validation_message(err)) from None
            images = [_b64(s, i) for i, s in enumerate(req.images)]
            max_gmacs, max_latency_ms, config, top_k = req.max_gmacs, req.max_latency_ms, req.config, req.top_k
        else:
            raise ServeError(415, f"content type {kind or 'none'!r}: send image/jpeg, image/png or application/json")
        return await server.classify(images, max_gmacs=max_gmacs, max_latency_ms=max_latency_ms, config=config,
                                     top_k=top_k, arrival=arrival)

    def openapi() -> dict[str, Any]:
        # The JSON body is read by hand (the limit comes first), so its schema is added here.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["ClassifyRequest"] = ClassifyRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


class _BodyLimit:
    """ASGI middleware: 413 when a request body exceeds the limit, before any of it is parsed.

    Content-Length over the limit is refused at once; a chunked body is counted as it arrives.
    """

    def __init__(self, app: Any, limit: Callable[[], int]):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit()
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _too_large(send, limit)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _too_large(send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Callable, limit: int) -> None:
    body = f'{{"detail":"request body over the limit of {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- helpers ------------------------------------------------------------------------------------


def _load_replica(options: ServeOptions) -> _Replica:
    import torch

    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    device = options.device
    if device.startswith("cuda") or _ray_gpu_ids():
        # A replica given a GPU (or told to use one) must not quietly serve on CPU: a broken CUDA
        # setup fails here, naming its fix.
        from snnet_ray.cuda_check import check_cuda

        status = check_cuda()
        if status.warning:
            log.warning("%s", status.warning)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    served = load_served_model(options.model, results=options.results, run=options.run,
                               checkpoint=options.checkpoint, device=device)
    if options.fixed_config is not None and options.fixed_config >= len(served.snnet.configs):
        raise ValueError(f"fixed_config {options.fixed_config} out of range: the model has configs "
                         f"0..{len(served.snnet.configs) - 1}")
    ids = [c.id for c in served.frontier]
    if options.fixed_config is not None and options.fixed_config not in ids:
        ids.append(options.fixed_config)
    table = measure_latency_table(served.snnet, ids, batch_sizes=options.batch_sizes())
    if options.results is not None and options.run is not None:
        _store_latency(options, table)
    return _Replica(served, options, table, options.policy(), torch.device(device), PolicyState.start(served.frontier))


def _ray_gpu_ids() -> list:
    """GPU ids Ray assigned to this actor; empty outside Ray or without GPUs."""
    import ray

    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def _store_latency(options: ServeOptions, table: LatencyTable) -> None:
    # Best effort: serving must not fail because the results service is away.
    from snnet_ray.results import connect

    try:
        with connect(options.results) as results:
            store_latency_table(results, options.run, table)
    except Exception as err:  # logged, never fatal
        log.warning("latency table not stored in the results service: %s", err)


def _check_budget(replica: _Replica, n_images: int, max_gmacs: float | None, max_latency_ms: float | None,
                  config: int | None) -> None:
    served, table = replica.served, replica.table
    n_configs = len(served.snnet.configs)
    if config is not None:
        if config >= n_configs:
            raise ServeError(422, f"unknown config {config}: this model has configs 0..{n_configs - 1} "
                                  "(GET /v1/configs lists the served frontier)")
        gmacs = served.gmacs[config]
        if max_gmacs is not None and gmacs > max_gmacs:
            raise ServeError(422, f"config {config} needs {gmacs:.4g} GMACs, over max_gmacs={max_gmacs:g}")
        # Only measured configs (the frontier and fixed_config) have a predicted latency.
        if max_latency_ms is not None and config in table:
            predicted = table.predict(config, n_images)
            if predicted > max_latency_ms:
                raise ServeError(422, f"config {config} needs about {predicted:.3g} ms for {n_images} image(s) on "
                                      f"{table.device}, over max_latency_ms={max_latency_ms:g}")
        return
    cheapest = min(served.frontier, key=lambda c: c.gmacs)
    if max_gmacs is not None and cheapest.gmacs > max_gmacs:
        raise ServeError(422, f"no served config within max_gmacs={max_gmacs:g}: the cheapest, config "
                              f"{cheapest.id}, needs {cheapest.gmacs:.4g} GMACs")
    if max_latency_ms is not None:
        fastest = min(table.predict(c.id, n_images) for c in served.frontier)
        if fastest > max_latency_ms:
            raise ServeError(422, f"no served config answers {n_images} image(s) within max_latency_ms="
                                  f"{max_latency_ms:g}: the fastest needs about {fastest:.3g} ms on {table.device}")


def _decode_all(images: list[bytes], served: ServedModel, options: ServeOptions) -> Any:
    import torch

    tensors = []
    for i, data in enumerate(images):
        what = f"image {i}" if len(images) > 1 else "the image"
        try:
            img = decode_image(data, max_bytes=options.max_image_bytes, max_pixels=options.max_pixels, what=what)
        except ImageError as err:
            raise ServeError(413 if err.too_large else 400, str(err)) from None
        tensors.append(served.transform(img))
    return torch.stack(tensors)


_FORWARD_LOCK = threading.Lock()


def _forward(replica: _Replica, cfg_id: int, chunks: list[Any]) -> tuple[Any, float]:
    import torch

    with _FORWARD_LOCK, torch.inference_mode():
        start = time.perf_counter()
        # uint8 crosses to the device; normalisation runs there (a quarter of the bytes of float32).
        x = replica.served.normalize(torch.cat(chunks).to(replica.device, non_blocking=True))
        probs = replica.served.snnet.forward_config(x, cfg_id).float().softmax(-1)
        out = probs.cpu()  # the one host sync of the batch: the answer goes back over HTTP
        return out, (time.perf_counter() - start) * 1e3


def _top_k(probs: Any, k: int) -> list[list[dict[str, Any]]]:
    values, indices = probs.topk(k, dim=-1)
    return [[{"class": int(c), "probability": round(float(p), 6)} for p, c in zip(vs, cs)]
            for vs, cs in zip(values.tolist(), indices.tolist())]


def _b64(text: str, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, f"image {index} is not valid base64") from None


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:10]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "invalid request: " + "; ".join(parts)
