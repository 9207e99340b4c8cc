"""Talking to the results service: `ResultsClient` over HTTP and `connect()` to find it.

`ResultsClient` has the methods of `LocalResults` and returns the same types, so evaluation
workers, Tune trials and the command line write `results = connect(...)` and do not care whether
the results live behind Ray Serve, a standalone uvicorn server or a local SQLite file. Requests
are retried (`retry.py`: exponential backoff with jitter) on connection errors and 5xx/429
answers; every write is an idempotent upsert, so a retry can never count a record twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from snnet_ray.results.export import format_from_path
from snnet_ray.results.local import LocalResults, _latency, _run_info, _write
from snnet_ray.results.retry import retry
from snnet_ray.results.schema import (
    Comparison,
    ConfigInfo,
    ConfigResult,
    EvalRecord,
    NetworkRecord,
    ResultsAuthError,
    ResultsNotFound,
    ResultsTable,
    RunSummary,
)

__all__ = ["ENV_TOKEN", "ENV_URL", "ResultsClient", "connect"]

ENV_URL = "SNNET_RESULTS_URL"
ENV_TOKEN = "SNNET_RESULTS_TOKEN"
# Records per request: large evaluations are sent in parts well under the service's limit.
CHUNK = 5_000
_RETRY_STATUS = {429, 502, 503, 504}


class ResultsClient:
    """The results service at `url` (e.g. http://127.0.0.1:8265/snnet-results)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.25,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"results URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(ENV_TOKEN) or None
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"ResultsClient({self.url!r})"

    def __enter__(self) -> ResultsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    # ---- writes ----------------------------------------------------------------------------

    def register_run(
        self,
        run: str,
        *,
        experiment: Mapping[str, Any] | None = None,
        trial_id: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        status: str | None = None,
    ) -> None:
        """Create or update a run; fields left None keep their stored value."""
        info = _run_info(run, experiment, trial_id, hyperparameters, status)
        self._request("POST", "/api/runs", json=info.model_dump(mode="json"))

    def put_configs(self, run: str, configs: Iterable[ConfigInfo | Mapping[str, Any]]) -> int:
        body = [ConfigInfo.model_validate(c).model_dump(mode="json") for c in configs]
        return self._request("PUT", f"/api/runs/{_q(run)}/configs", json=body).json()["configs"]

    def ingest(self, records: Iterable[EvalRecord | Mapping[str, Any]]) -> int:
        """Upsert eval records (validated here first, sent in parts of `CHUNK`)."""
        body = [EvalRecord.model_validate(r).model_dump(mode="json") for r in records]
        total = 0
        for start in range(0, len(body), CHUNK):
            total += self._request("POST", "/api/evals", json=body[start : start + CHUNK]).json()["ingested"]
        return total

    def put_latency(self, run: str, device: str, latency_ms: Mapping[int, float]) -> int:
        body = [r.model_dump(mode="json") for r in _latency(run, device, latency_ms)]
        return self._request("PUT", "/api/latency", json=body).json()["latencies"]

    def put_network(self, records: Iterable[NetworkRecord | Mapping[str, Any]]) -> int:
        body = [NetworkRecord.model_validate(r).model_dump(mode="json") for r in records]
        return self._request("PUT", "/api/network", json=body).json()["network"]

    # ---- reads -----------------------------------------------------------------------------

    def network(self, run: str) -> list[NetworkRecord]:
        return [NetworkRecord.model_validate(r) for r in self._get(f"/api/runs/{_q(run)}/network")]

    def runs(self) -> list[RunSummary]:
        return [RunSummary.model_validate(r) for r in self._get("/api/runs")]

    def get_run(self, run: str) -> RunSummary:
        return RunSummary.model_validate(self._get(f"/api/runs/{_q(run)}"))

    def checkpoints(self, run: str) -> list[str]:
        return self._get(f"/api/runs/{_q(run)}/checkpoints")

    def done_shards(self, run: str, checkpoint: str) -> dict[str, int]:
        return self._get(f"/api/runs/{_q(run)}/shards", checkpoint=checkpoint)

    def records(self, run: str, checkpoint: str | None = None) -> list[EvalRecord]:
        return [EvalRecord.model_validate(r) for r in self._get(f"/api/runs/{_q(run)}/records",
                                                                 checkpoint=checkpoint)]

    def table(self, run: str, checkpoint: str | None = None) -> ResultsTable:
        return ResultsTable.model_validate(self._get(f"/api/runs/{_q(run)}/table", checkpoint=checkpoint))

    def pareto(
        self, run: str, checkpoint: str | None = None, by: str = "gmacs", device: str | None = None
    ) -> list[ConfigResult]:
        rows = self._get(f"/api/runs/{_q(run)}/pareto", checkpoint=checkpoint, by=by, device=device)
        return [ConfigResult.model_validate(r) for r in rows]

    def best(
        self,
        run: str,
        max_gmacs: float | None = None,
        max_latency_ms: float | None = None,
        device: str | None = None,
        checkpoint: str | None = None,
    ) -> ConfigResult:
        if max_gmacs is None and max_latency_ms is None:
            raise ValueError("give a budget: max_gmacs and/or max_latency_ms")
        row = self._get(f"/api/runs/{_q(run)}/best", max_gmacs=max_gmacs, max_latency_ms=max_latency_ms,
                        device=device, checkpoint=checkpoint)
        return ConfigResult.model_validate(row)

    def compare(
        self, run_a: str, run_b: str, checkpoint_a: str | None = None, checkpoint_b: str | None = None
    ) -> Comparison:
        return Comparison.model_validate(self._get("/api/compare", a=run_a, b=run_b,
                                                   checkpoint_a=checkpoint_a, checkpoint_b=checkpoint_b))

    def export_bytes(self, run: str, fmt: str = "parquet", checkpoint: str | None = None) -> bytes:
        params = _params(format=fmt, checkpoint=checkpoint)
        return self._request("GET", f"/api/runs/{_q(run)}/export", params=params).content

    def export(self, run: str, out: str | os.PathLike[str], checkpoint: str | None = None) -> Path:
        """Write the table to `out` (.parquet or .csv) and return its path."""
        path = Path(out)
        return _write(path, self.export_bytes(run, format_from_path(path), checkpoint))

    # ---- helpers ---------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=_params(**params)).json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            response = self._http.request(method, path, **kwargs)
            if response.status_code in _RETRY_STATUS or response.status_code >= 500:
                raise _Retryable(response)
            return response

        try:
            response = retry(once, on=(httpx.TransportError, _Retryable), attempts=self.retries + 1,
                             backoff=self.backoff, max_delay=30.0)
        except httpx.TransportError as err:
            raise ConnectionError(
                f"cannot reach the results service at {self.url} ({err.__class__.__name__}: {err}); "
                "is it running? (`snnet-ray results serve`, or ensure_results_service on Ray)"
            ) from err
        except _Retryable as err:
            response = err.response
        _raise_for_status(response, self.url)
        return response


class _Retryable(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(response.status_code)
        self.response = response


def connect(
    url: str | os.PathLike[str] | None = None,
    *,
    token: str | None = None,
    name: str = "snnet-results",
) -> ResultsClient | LocalResults:
    """The results to read and write, wherever they are.

    Tries in order: `url` (an http(s) URL gives a `ResultsClient`; a database URL or file path a
    `LocalResults`), then $SNNET_RESULTS_URL (the same two forms), then, when Ray is initialized,
    the Ray Serve application `name`.
    """
    target = os.fspath(url) if url is not None else os.environ.get(ENV_URL) or None
    if target is None:
        target = _serve_url(name)
    if target is None:
        raise ValueError(
            "no results service to connect to: pass a URL (http://... or sqlite:///FILE), set "
            f"${ENV_URL}, or start one on Ray with snnet_ray.results.serve.ensure_results_service"
        )
    if target.startswith(("http://", "https://")):
        return ResultsClient(target, token=token)
    return LocalResults(target)


def _serve_url(name: str) -> str | None:
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    from snnet_ray.results.serve import find_results_service

    return find_results_service(name)


def _raise_for_status(response: httpx.Response, url: str) -> None:
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    status = response.status_code
    if status in (401, 403):
        raise ResultsAuthError(f"{detail} (results service {url}; give the token: ${ENV_TOKEN} or --token)")
    if status == 404:
        raise ResultsNotFound(str(detail))
    if status < 500:
        raise ValueError(f"results service rejected the request ({status}): {detail}")
    raise ConnectionError(f"results service {url} failed ({status}): {detail}")


def _params(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _q(name: str) -> str:
    return quote(name, safe="")
