"""HTTP API and pages of the results service (FastAPI).

The same app runs under uvicorn (`snnet-ray results serve`) and as a Ray Serve ingress (serve.py).
Writes (runs, configs, eval records, latency) need `Authorization: Bearer <token>` when the app
has a token; reads are open. Payloads are validated before anything is stored, and a malformed
one is answered with 422 and a message naming each bad field.

    POST /api/runs                       RunInfo                  register or update a run
    PUT  /api/runs/{run}/configs         [ConfigInfo]             names, kinds, GMACs, params
    POST /api/evals                      [EvalRecord]             partial counts per shard (upsert)
    PUT  /api/latency                    [LatencyRecord]          latency per config and device
    PUT  /api/network                    [NetworkRecord]          each worker's network check at start
    GET  /api/runs                       [RunSummary]
    GET  /api/runs/{run}                 RunSummary
    GET  /api/runs/{run}/checkpoints     [str]
    GET  /api/runs/{run}/network         [NetworkRecord]          transport and bus bandwidth per worker
    GET  /api/runs/{run}/shards          {shard: configs}         ?checkpoint=
    GET  /api/runs/{run}/records         [EvalRecord]             ?checkpoint=
    GET  /api/runs/{run}/table           ResultsTable             ?checkpoint=
    GET  /api/runs/{run}/pareto          [ConfigResult]           ?checkpoint=&by=gmacs|latency&device=
    GET  /api/runs/{run}/best            ConfigResult             ?max_gmacs=&max_latency_ms=&device=
    GET  /api/runs/{run}/export          file                     ?format=parquet|csv&checkpoint=
    GET  /api/compare                    Comparison               ?a=&b=&checkpoint_a=&checkpoint_b=
    GET  /  /runs/{run}  /compare        HTML pages (chart inline, no network needed)
    GET  /published/{name}[?run=R]       a release's published results, or run R beside them
    GET  /api/published/{name}[?run=R]   the same as ResultsTable / Comparison

Hostile input is bounded before it costs anything: a request body over `MAX_BODY_BYTES` is refused
with 413 while it streams in, before any parsing (`BodyLimit`); a batch holds at most `MAX_BATCH`
records; every name (run, checkpoint, shard, device; in bodies, path and query alike) follows
`snnet_ray.names`; every number is finite and bounded (`schema.LIMITS`). Every answer, errors
included, is described in the OpenAPI document (`/openapi.json`): errors are `ErrorBody`.
"""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from snnet_ray.results.body_limit import BodyLimit
from snnet_ray.results.export import EXPORT_FORMATS
from snnet_ray.results.local import LocalResults
from snnet_ray.results.page import compare_page, index_page, run_page
from snnet_ray.results.schema import (
    CheckpointName,
    Comparison,
    ConfigInfo,
    ConfigResult,
    DeviceName,
    ErrorBody,
    EvalRecord,
    LatencyRecord,
    NetworkRecord,
    ResultsAuthError,
    ResultsNotFound,
    ResultsTable,
    RunInfo,
    RunName,
    RunSummary,
)
from snnet_ray.results.store import ResultsStore

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "SERVICE_NAME", "create_app"]

SERVICE_NAME = "snnet-results"
# The largest batch: 20,000 records in one request. An eval record of the longest names is under
# 800 bytes of JSON, so a full batch fits the body limit; `ResultsClient` sends 5,000 at a time.
MAX_BATCH = 20_000
MAX_BODY_BYTES = 16 * 1024 * 1024

RunPath = Annotated[RunName, PathParam(description="run name (see snnet_ray.names)")]
CheckpointQuery = Annotated[CheckpointName | None, Query()]
PublishedPath = Annotated[
    str, PathParam(pattern=r"^[a-z0-9_]{1,64}$", description="a published release: deit, swin, resnet, ...")
]


def _release(name: str) -> str:
    """`name` if it is a packaged release; ResultsNotFound (404) naming the available ones otherwise."""
    from snnet_ray.reference.published import list_published

    available = list_published()
    if name not in available:
        raise ResultsNotFound(f"no published results called {name!r}; available: {', '.join(available)}")
    return name
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "a request the service cannot answer (the detail says why)"),
        (404, "no such run, checkpoint, config or device"),
        (413, f"request body over {MAX_BODY_BYTES} bytes"),
        (422, "a malformed request: `errors` has one line per bad field"),
    )
}
# Pages answer errors in JSON too: documented as such, not under the page's text/html.
_PAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": r["description"],
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for code, r in _ERRORS.items()
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no bearer token (the service has one)"},
    403: {"model": ErrorBody, "description": "a bearer token that is not the service's"},
}
STATIC_DIR = Path(__file__).parent / "static"
# Module level: annotations are strings here, resolved against this module's globals.
_BEARER = HTTPBearer(auto_error=False)


def create_app(store: ResultsStore | LocalResults, token: str | None = None) -> FastAPI:
    """The results service over `store`; writes need `token` as a bearer token when one is given."""
    results = store if isinstance(store, LocalResults) else LocalResults(store)
    app = FastAPI(
        title="snnet-ray results",
        description="Per-config SN-Net evaluation results: exact accuracies, Pareto frontiers, budgets.",
        version="1",
        responses=_ERRORS,
    )
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.state.results = results
    app.state.instance = uuid.uuid4().hex
    _add_error_handlers(app)
    writer = [Depends(_bearer_check(token))]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": SERVICE_NAME, "backend": results.store.backend,
                "instance": app.state.instance, "auth": token is not None}

    # ---- writes ----------------------------------------------------------------------------

    @app.post("/api/runs", dependencies=writer, responses=_WRITE_ERRORS)
    def register_run(info: RunInfo) -> dict[str, str]:
        results.store.register_run(info)
        return {"run": info.run}

    @app.put("/api/runs/{run}/configs", dependencies=writer, responses=_WRITE_ERRORS)
    def put_configs(run: RunPath, configs: Annotated[list[ConfigInfo], Body(max_length=MAX_BATCH)]) -> dict[str, int]:
        return {"configs": results.store.put_configs(run, configs)}

    @app.post("/api/evals", dependencies=writer, responses=_WRITE_ERRORS)
    def ingest(records: Annotated[list[EvalRecord], Body(max_length=MAX_BATCH)]) -> dict[str, int]:
        return {"ingested": results.store.ingest(records)}

    @app.put("/api/latency", dependencies=writer, responses=_WRITE_ERRORS)
    def put_latency(records: Annotated[list[LatencyRecord], Body(max_length=MAX_BATCH)]) -> dict[str, int]:
        return {"latencies": results.store.put_latency(records)}

    @app.put("/api/network", dependencies=writer, responses=_WRITE_ERRORS)
    def put_network(records: Annotated[list[NetworkRecord], Body(max_length=MAX_BATCH)]) -> dict[str, int]:
        return {"network": results.store.put_network(records)}

    # ---- reads -----------------------------------------------------------------------------

    @app.get("/api/runs")
    def runs() -> list[RunSummary]:
        return results.runs()

    @app.get("/api/runs/{run}")
    def get_run(run: RunPath) -> RunSummary:
        return results.get_run(run)

    @app.get("/api/runs/{run}/network")
    def network(run: RunPath) -> list[NetworkRecord]:
        return results.network(run)

    @app.get("/api/runs/{run}/checkpoints")
    def checkpoints(run: RunPath) -> list[str]:
        return results.checkpoints(run)

    @app.get("/api/runs/{run}/shards")
    def done_shards(run: RunPath, checkpoint: Annotated[CheckpointName, Query()]) -> dict[str, int]:
        return results.done_shards(run, checkpoint)

    @app.get("/api/runs/{run}/records")
    def records(run: RunPath, checkpoint: CheckpointQuery = None) -> list[EvalRecord]:
        return results.records(run, checkpoint)

    @app.get("/api/runs/{run}/table")
    def table(run: RunPath, checkpoint: CheckpointQuery = None) -> ResultsTable:
        return results.table(run, checkpoint)

    @app.get("/api/runs/{run}/pareto")
    def pareto(
        run: RunPath,
        checkpoint: CheckpointQuery = None,
        by: Literal["gmacs", "latency"] = "gmacs",
        device: Annotated[DeviceName | None, Query()] = None,
    ) -> list[ConfigResult]:
        return results.pareto(run, checkpoint, by, device)

    @app.get("/api/runs/{run}/best")
    def best(
        run: RunPath,
        max_gmacs: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
        max_latency_ms: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
        device: Annotated[DeviceName | None, Query()] = None,
        checkpoint: CheckpointQuery = None,
    ) -> ConfigResult:
        return results.best(run, max_gmacs, max_latency_ms, device, checkpoint)

    @app.get(
        "/api/runs/{run}/export",
        response_class=Response,
        responses={200: {"description": "the table as a file",
                         "content": {mime: {"schema": {"type": "string", "format": "binary"}}
                                     for mime in EXPORT_FORMATS.values()}}},
    )
    def export(
        run: RunPath, format: Literal["parquet", "csv"] = "parquet", checkpoint: CheckpointQuery = None
    ) -> Response:
        data = results.export_bytes(run, format, checkpoint)
        table_ck = checkpoint or results.table(run).checkpoint or "none"
        filename = f"{_safe_filename(run)}-{_safe_filename(table_ck)}.{format}"
        return Response(data, media_type=EXPORT_FORMATS[format],
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/api/compare")
    def compare(
        a: Annotated[RunName, Query()],
        b: Annotated[RunName, Query()],
        checkpoint_a: CheckpointQuery = None,
        checkpoint_b: CheckpointQuery = None,
    ) -> Comparison:
        return results.compare(a, b, checkpoint_a, checkpoint_b)

    # ---- pages -----------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, responses=_PAGE_ERRORS)
    def index(request: Request) -> str:
        return index_page(results.runs(), base=_base(request))

    @app.get("/runs/{run}", response_class=HTMLResponse, responses=_PAGE_ERRORS)
    def run_view(request: Request, run: RunPath, checkpoint: CheckpointQuery = None) -> str:
        table = results.table(run, checkpoint)
        return run_page(table, results.get_run(run), base=_base(request))

    @app.get("/compare", response_class=HTMLResponse, responses=_PAGE_ERRORS)
    def compare_view(
        request: Request,
        a: Annotated[RunName, Query()],
        b: Annotated[RunName, Query()],
        checkpoint_a: CheckpointQuery = None,
        checkpoint_b: CheckpointQuery = None,
    ) -> str:
        ta, tb = results.table(a, checkpoint_a), results.table(b, checkpoint_b)
        return compare_page(results.compare(a, b, checkpoint_a, checkpoint_b), ta, tb, base=_base(request))

    @app.get("/api/published/{name}")
    def published_api(
        name: PublishedPath, run: Annotated[RunName | None, Query()] = None, checkpoint: CheckpointQuery = None
    ) -> ResultsTable | Comparison:
        from snnet_ray.results.published import compare_published, published_table

        if run is None:
            return published_table(_release(name))
        return compare_published(results.table(run, checkpoint), _release(name))

    @app.get("/published/{name}", response_class=HTMLResponse, responses=_PAGE_ERRORS)
    def published_view(
        request: Request,
        name: PublishedPath,
        run: Annotated[RunName | None, Query()] = None,
        checkpoint: CheckpointQuery = None,
    ) -> str:
        from snnet_ray.results.published import compare_published, published_table

        published = published_table(_release(name))
        if run is None:
            return run_page(published, None, base=_base(request))
        table = results.table(run, checkpoint)
        return compare_page(compare_published(table, name), published, table, base=_base(request))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _bearer_check(token: str | None) -> Any:
    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if token is None:
            return
        if credentials is None:
            raise ResultsAuthError("this results service requires 'Authorization: Bearer <token>' on writes")
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise PermissionError("the bearer token is not this results service's token")

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_describe(err) for err in exc.errors()]
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        return JSONResponse(status_code=422, content={"detail": f"invalid request: {shown}",
                                                      "errors": problems})

    @app.exception_handler(ResultsAuthError)
    def unauthenticated(_: Request, exc: ResultsAuthError) -> JSONResponse:
        return JSONResponse(status_code=401, content={"detail": str(exc)},
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(PermissionError)
    def forbidden(_: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse(status_code=403, content={"detail": str(exc)})

    @app.exception_handler(ResultsNotFound)
    def not_found(_: Request, exc: ResultsNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ValueError)
    def bad_request(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})


def _describe(err: dict[str, Any]) -> str:
    # ("body", 3, "samples") -> "[3].samples"; the message says what was wrong with it.
    loc = [p for p in err.get("loc", ()) if p != "body"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {msg}"


def _base(request: Request) -> str:
    # Behind Ray Serve the app is mounted under a route prefix, which arrives as the root path.
    return str(request.scope.get("root_path", "")).rstrip("/")


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
