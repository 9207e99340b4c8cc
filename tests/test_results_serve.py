"""The results service as a Ray Serve application on a real local Ray cluster.

Deployed when not running, written to and read over HTTP through Serve's proxy, found again by name
(the same replica answers: not redeployed), reached by `connect()` from inside Ray, then shut down.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from snnet_ray.results import ResultsAuthError, ResultsClient, connect

TOKEN = "serve-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_deploys_once_and_is_found_by_name(tmp_path, monkeypatch):
    import ray
    from ray import serve

    from snnet_ray.results.serve import ensure_results_service, find_results_service, shutdown_results_service

    monkeypatch.delenv("SNNET_RESULTS_URL", raising=False)
    monkeypatch.delenv("SNNET_RESULTS_TOKEN", raising=False)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert find_results_service("snnet-results") is None
        port = _free_port()
        url = ensure_results_service(db, name="snnet-results", token=TOKEN, port=port)
        assert url == f"http://127.0.0.1:{port}/snnet-results"

        with ResultsClient(url, token=TOKEN) as client:
            first = client.health()
            client.register_run("serve-run", status="running")
            records = [dict(run="serve-run", checkpoint="final", config_id=c, shard=f"s{s}", samples=50,
                            top1_correct=10 + c, top5_correct=45) for c in range(5) for s in range(3)]
            assert client.ingest(records) == 15
            assert client.ingest(records[:5]) == 5  # a retry counts once
            table = client.table("serve-run")
            assert [(r.samples, r.top1) for r in table.rows] == [(150, 100 * 3 * (10 + c) / 150) for c in range(5)]
        with pytest.raises(ResultsAuthError):
            ResultsClient(url).ingest(records)

        # The page and its assets are served under the application's route prefix.
        page = httpx.get(f"{url}/runs/serve-run", timeout=30)
        assert page.status_code == 200 and 'href="/snnet-results/static/style.css"' in page.text
        assert httpx.get(f"{url}/static/results.js", timeout=30).status_code == 200

        # Found by name, not redeployed: the same app instance answers, and the data is there.
        deployed_at = serve.status().applications["snnet-results"].last_deployed_time_s
        assert ensure_results_service(db, name="snnet-results", token=TOKEN, port=_free_port()) == url
        assert serve.status().applications["snnet-results"].last_deployed_time_s == deployed_at
        found = connect()  # from a Ray driver, with no URL and no $SNNET_RESULTS_URL
        assert isinstance(found, ResultsClient) and found.url == url
        assert found.health()["instance"] == first["instance"]
        assert found.table("serve-run") == table
        found.close()

        @ray.remote(num_cpus=0)
        def url_seen_by_a_worker() -> str:
            from snnet_ray.results import connect

            with connect() as results:
                return results.url

        assert ray.get(url_seen_by_a_worker.remote()) == url

        shutdown_results_service("snnet-results")
        assert find_results_service("snnet-results") is None
    finally:
        serve.shutdown()
        ray.shutdown()
