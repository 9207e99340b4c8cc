"""The results service over HTTP: a real uvicorn server, real clients, the real command line.

20 concurrent writers lose nothing and count nothing twice; a service killed and restarted on the
same SQLite file still has every acknowledged record; writes without the token and malformed
payloads are rejected with the right status and a message naming the problem.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import uvicorn
from PIL import Image

from snnet_ray import cli
from snnet_ray.results import (
    ConfigInfo,
    EvalRecord,
    LocalResults,
    ResultsAuthError,
    ResultsClient,
    ResultsStore,
    connect,
    create_app,
)

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving an app from a thread of this process."""

    def __init__(self, app, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _start_cli_server(db: Path, port: int, token: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snnet_ray.cli", "results", "serve", "--db", str(db), "--port", str(port)]
    if token:
        cmd += ["--token", token]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`snnet-ray results serve` exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("`snnet-ray results serve` did not answer /healthz in 120 s")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def _records(writer: int, n: int, run: str = "r") -> list[dict]:
    return [
        dict(run=run, checkpoint="final", config_id=i % 10, shard=f"w{writer:02d}-s{i // 10:04d}",
             samples=32, top1_correct=(writer + i) % 33, top5_correct=32, loss_sum=1.5, worker=f"w{writer}")
        for i in range(n)
    ]


@pytest.mark.slow
def test_concurrent_http_writers_then_killed_and_restarted(tmp_path):
    db = tmp_path / "results.db"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    writers, per_writer, batch = 20, 600, 100
    proc = _start_cli_server(db, port, TOKEN)
    try:
        errors: list[BaseException] = []

        def write(w: int) -> None:
            try:
                with ResultsClient(url, token=TOKEN) as client:
                    recs = _records(w, per_writer)
                    for start in range(0, per_writer, batch):
                        client.ingest(recs[start : start + batch])
                    client.ingest(recs[:batch])  # a retried batch: replaces, never adds
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        with ResultsClient(url) as client:
            before = client.table("r")
            assert len(client.records("r")) == writers * per_writer
        expected = {
            c: sum((w + i) % 33 for w in range(writers) for i in range(c, per_writer, 10)) for c in range(10)
        }
        for row in before.rows:
            assert row.samples == 32 * writers * per_writer // 10
            assert row.shards == writers * per_writer // 10
            assert row.top1 == pytest.approx(100 * expected[row.config_id] / row.samples)
    finally:
        # SIGKILL: no graceful shutdown; every acknowledged write must already be on disk.
        _stop(proc, signal.SIGKILL)

    proc = _start_cli_server(db, port, TOKEN)
    try:
        with ResultsClient(url) as client:
            assert client.table("r") == before
            assert len(client.records("r")) == writers * per_writer
    finally:
        _stop(proc)


def test_writes_need_the_token_and_reads_do_not(tmp_path):
    with ThreadServer(create_app(ResultsStore(tmp_path / "r.db"), token=TOKEN)) as server:
        body = _records(0, 3)
        r = httpx.post(f"{server.url}/api/evals", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["detail"]
        r = httpx.post(f"{server.url}/api/evals", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403
        r = httpx.post(f"{server.url}/api/runs", json={"run": "r"}, headers={"Authorization": "Basic eDp5"})
        assert r.status_code == 401
        for path in ("/api/runs", "/api/latency"):
            method = httpx.post if path == "/api/runs" else httpx.put
            assert method(f"{server.url}{path}", json=[]).status_code == 401
        assert httpx.get(f"{server.url}/api/runs").json() == []  # nothing got in

        with pytest.raises(ResultsAuthError, match="requires 'Authorization: Bearer"):
            ResultsClient(server.url, token=None).ingest(body)
        with ResultsClient(server.url, token=TOKEN) as client:
            assert client.ingest(body) == 3
        assert httpx.get(f"{server.url}/api/runs/r/table").status_code == 200


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([{"run": "r", "checkpoint": "final", "config_id": 0, "samples": 10, "top1_correct": 1,
           "top5_correct": 2}], "[0].shard: Field required"),
        ([{"run": "r", "checkpoint": "final", "config_id": 0, "shard": "s", "samples": 10,
           "top1_correct": 11, "top5_correct": 11}], "top1_correct <= top5_correct <= samples"),
        ([{"run": "r", "checkpoint": "final", "config_id": -1, "shard": "s", "samples": 10,
           "top1_correct": 1, "top5_correct": 2}], "[0].config_id: Input should be greater than or equal to 0"),
        ([{"run": "r", "checkpoint": "final", "config_id": 0, "shard": "s", "samples": "many",
           "top1_correct": 1, "top5_correct": 2}], "[0].samples: Input should be a valid integer"),
        ([{"run": "a/b", "checkpoint": "final", "config_id": 0, "shard": "s", "samples": 10,
           "top1_correct": 1, "top5_correct": 2}], "run 'a/b' is not a valid name"),
        ([{"run": "r", "checkpoint": "final", "config_id": 0, "shard": "s", "samples": 10,
           "top1_correct": 1, "top5_correct": 2, "colour": "red"}], "[0].colour: Extra inputs are not permitted"),
        ({"run": "r"}, "Input should be a valid list"),
        ("not json at all", "JSON decode error"),
    ],
)
def test_malformed_writes_are_rejected_with_a_message(tmp_path, payload, message):
    with ThreadServer(create_app(ResultsStore(tmp_path / "r.db"), token=TOKEN)) as server:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        data = payload if isinstance(payload, str) else json.dumps(payload)
        r = httpx.post(f"{server.url}/api/evals", content=data, headers=headers)
        assert r.status_code == 422, r.text
        assert message in r.json()["detail"]
        assert httpx.get(f"{server.url}/api/runs").json() == []


def test_queries_over_http_match_the_local_store(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    with ThreadServer(create_app(store)) as server, ResultsClient(server.url) as client:
        client.register_run("r", experiment={"epochs": 1}, trial_id="t1", hyperparameters={"lr": 0.1},
                            status="finished")
        client.put_configs("r", [ConfigInfo(config_id=c, name=f"c{c}", gmacs=1.0 + c) for c in range(10)])
        client.ingest(_records(0, 50) + _records(1, 50))
        client.put_latency("r", "cpu", {c: 2.0 + c for c in range(10)})
        local = LocalResults(store)
        assert client.table("r") == local.table("r")
        assert client.pareto("r") == local.pareto("r")
        assert client.pareto("r", by="latency", device="cpu") == local.pareto("r", by="latency", device="cpu")
        assert client.best("r", max_gmacs=4.5) == local.best("r", max_gmacs=4.5)
        assert client.get_run("r").hyperparameters == {"lr": 0.1}
        assert client.done_shards("r", "final") == local.done_shards("r", "final")
        client.ingest(_records(2, 50, run="q"))
        assert client.compare("r", "q") == local.compare("r", "q")
        assert {r.run for r in client.runs()} == {"r", "q"}
        path = client.export("r", tmp_path / "r.parquet")
        assert pq.read_table(path).num_rows == 10
        with pytest.raises(ValueError, match="unknown run 'zzz'"):
            client.table("zzz")
        with pytest.raises(ValueError, match="no evaluated config fits gmacs <= 0.1"):
            client.best("r", max_gmacs=0.1)
        # An unknown format is a malformed request (the OpenAPI document lists the two formats).
        assert httpx.get(f"{server.url}/api/runs/r/export", params={"format": "xls"}).status_code == 422


def test_client_retries_until_the_service_is_up(tmp_path):
    port = _free_port()
    done: list[int] = []
    client = ResultsClient(f"http://127.0.0.1:{port}", retries=10, backoff=0.1)
    sender = threading.Thread(target=lambda: done.append(client.ingest(_records(0, 20))))
    sender.start()
    time.sleep(1.0)  # the first tries are refused
    with ThreadServer(create_app(ResultsStore(tmp_path / "r.db")), port=port):
        sender.join(timeout=60)
        assert done == [20]
    with pytest.raises(ConnectionError, match="cannot reach the results service"):
        ResultsClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01).runs()


def test_connect_picks_url_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SNNET_RESULTS_URL", raising=False)
    local = connect(f"sqlite:///{tmp_path / 'r.db'}")
    assert isinstance(local, LocalResults)
    local.ingest(_records(0, 5))
    with ThreadServer(create_app(local.store)) as server:
        monkeypatch.setenv("SNNET_RESULTS_URL", server.url)
        remote = connect()
        assert isinstance(remote, ResultsClient)
        assert remote.table("r") == local.table("r")
        remote.close()
    monkeypatch.delenv("SNNET_RESULTS_URL")
    with pytest.raises(ValueError, match="no results service to connect to"):
        connect()
    local.close()


def test_command_line_show_pareto_export(tmp_path, capsys, monkeypatch):
    db = tmp_path / "r.db"
    with LocalResults(db) as results:
        results.put_configs("r", [
            ConfigInfo(config_id=0, name="tiny", kind="anchor", anchors=[0], gmacs=1.0),
            ConfigInfo(config_id=1, name="small", kind="anchor", anchors=[1], gmacs=4.0),
            *[ConfigInfo(config_id=c, name=f"0-1:{c}", anchors=[0, 1], gmacs=1.0 + c / 3) for c in range(2, 10)],
        ])
        results.ingest([EvalRecord(run="r", checkpoint="final", config_id=c, shard=f"s{s}", samples=100,
                                   top1_correct=50 + 4 * c - (c % 3) * 5 - s, top5_correct=95)
                        for c in range(10) for s in range(2)])
        front = results.pareto("r")

    assert cli.main(["results", "show", "--db", str(db), "--run", "r"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "run r · final · 10 configs evaluated"
    assert "◆ tiny" in out and "◆ small" in out
    assert out.count("★") == len(front) + 1  # and once in the legend

    png = tmp_path / "pareto.png"
    assert cli.main(["results", "pareto", "--db", str(db), "--run", "r", "--png", str(png), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["config_id"] for r in data["frontier"]] == [r.config_id for r in front]
    image = Image.open(png).convert("RGB")
    assert image.size[0] > 600 and len(set(image.getdata())) > 50  # a drawn figure, not a blank canvas

    with ThreadServer(create_app(ResultsStore(db))) as server:
        out_csv = tmp_path / "r.csv"
        assert cli.main(["results", "export", "--url", server.url, "--run", "r", "--out", str(out_csv)]) == 0
        assert f"wrote {out_csv}" in capsys.readouterr().out
        assert out_csv.read_text().splitlines()[0].startswith('"run","checkpoint","config_id"')
        assert cli.main(["results", "runs", "--url", server.url, "--json"]) == 0
        assert [r["run"] for r in json.loads(capsys.readouterr().out)] == ["r"]

    assert cli.main(["results", "show", "--db", str(tmp_path / "missing.db"), "--run", "r"]) == 2
    assert "no results database at" in capsys.readouterr().err
    assert cli.main(["results", "show", "--db", str(db), "--run", "nope"]) == 2
    assert "unknown run 'nope'" in capsys.readouterr().err
    monkeypatch.delenv("SNNET_RESULTS_URL", raising=False)
    assert cli.main(["results", "runs"]) == 2
    assert "say where the results are" in capsys.readouterr().err
