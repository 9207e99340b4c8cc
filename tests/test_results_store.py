"""The results store on SQLite and on a real PostgreSQL server: idempotent ingest, exact sums,
many concurrent writers, restart.

The PostgreSQL server is started by the fixture (initdb in a temporary folder, pg_ctl on a free
port, as the `postgres` user when running as root); the tests skip, saying why, only where the
server binaries are not installed and cannot be (scripts/system_deps.sh installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from fractions import Fraction
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from snnet_ray.results import ConfigInfo, EvalRecord, LocalResults, ResultsNotFound, ResultsStore, RunInfo

REPO = Path(__file__).resolve().parents[1]


# ---- PostgreSQL server ----------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def _find_pg() -> tuple[str, str] | None:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    script = REPO / "scripts" / "system_deps.sh"
    if script.exists():
        subprocess.run(["bash", str(script)], check=False, capture_output=True, timeout=900)
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """postgresql+psycopg:// URL of a throwaway server (superuser `postgres`, trust auth)."""
    binaries = _find_pg()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found and could not be installed "
                    "(run scripts/system_deps.sh, or apt-get install postgresql)")
    initdb, pg_ctl = binaries
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb and postgres refuse to run as root.
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else []
        if not as_user:
            pytest.skip("running as root without `runuser` to start PostgreSQL as the postgres user")
    # tmp_path's parents are private to root; the server's user needs its own folder.
    root = Path(tempfile.mkdtemp(prefix="snnet-pg-"))
    data = root / "data"
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)
    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        run(pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "-t", "60", "start")
    except subprocess.CalledProcessError as err:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {err.stderr}\n{log}") from err
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    import psycopg

    server = request.getfixturevalue("postgres_url")
    name = f"results_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + f"/{name}"


def _record(cid: int, shard: int, samples: int = 100, top1: int = 50, run: str = "r", ck: str = "final"):
    return EvalRecord(run=run, checkpoint=ck, config_id=cid, shard=f"val-{shard:03d}", samples=samples,
                      top1_correct=top1, top5_correct=min(samples, top1 + 10), loss_sum=0.5 * samples)


# ---- tests ----------------------------------------------------------------------------------


def test_replayed_and_duplicated_ingest_counts_once(db_url):
    with LocalResults(db_url) as results:
        batch = [_record(c, s, top1=40 + c) for c in range(3) for s in range(5)]
        assert results.ingest(batch) == 15
        assert results.ingest(batch) == 15  # a replay of the same batch
        # Duplicates inside one batch: the last one wins.
        assert results.ingest([_record(0, 0, top1=1), _record(0, 0, top1=40)]) == 1
        table = results.table("r")
        assert [(r.config_id, r.samples, r.shards, r.top1) for r in table.rows] == [
            (0, 500, 5, 40.0), (1, 500, 5, 41.0), (2, 500, 5, 42.0)
        ]
        # A retry with different counts replaces the shard's record, it does not add to it.
        results.ingest([_record(1, 4, samples=100, top1=91)])
        row = results.table("r").row(1)
        assert (row.samples, row.top1) == (500, 100 * (41 * 4 + 91) / 500)
        assert len(results.records("r")) == 15
        assert results.done_shards("r", "final") == {f"val-{s:03d}": 3 for s in range(5)}


def test_accuracies_are_exact_sums_over_shards(db_url):
    shards = [(97, 31, 60), (101, 33, 71), (3, 1, 2), (250, 130, 200)]  # samples, top1, top5
    with LocalResults(db_url) as results:
        results.ingest([
            EvalRecord(run="r", checkpoint="final", config_id=7, shard=f"s{i}", samples=n, top1_correct=t1,
                       top5_correct=t5, loss_sum=0.25 * n)
            for i, (n, t1, t5) in enumerate(shards)
        ])
        row = results.table("r").row(7)
    total = sum(n for n, _, _ in shards)
    assert row.samples == total and row.shards == 4
    assert row.top1 == float(100 * Fraction(sum(t for _, t, _ in shards), total))
    assert row.top5 == float(100 * Fraction(sum(t for _, _, t in shards), total))
    assert row.loss == pytest.approx(0.25)


def test_twenty_concurrent_writers_lose_nothing(db_url):
    writers, batches, per_batch = 20, 6, 60
    errors: list[BaseException] = []

    def write(w: int) -> None:
        store = None
        try:
            # Each writer is its own store (its own engine and connections), like a separate worker,
            # and all of them open the fresh database at the same time.
            store = ResultsStore(db_url)
            for b in range(batches):
                recs = [_record(cid=w, shard=b * per_batch + i, samples=10, top1=(w + i) % 11)
                        for i in range(per_batch)]
                store.ingest(recs)
                # Every writer also replays its neighbour's first batch: duplicates across writers.
                n = (w + 1) % writers
                store.ingest([_record(cid=n, shard=i, samples=10, top1=(n + i) % 11) for i in range(per_batch)])
        except BaseException as err:
            errors.append(err)
        finally:
            if store is not None:
                store.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with LocalResults(db_url) as results:
        table = results.table("r")
        assert len(results.records("r")) == writers * batches * per_batch
    assert len(table.rows) == writers
    for row in table.rows:
        w = row.config_id
        expected = sum((w + i) % 11 for b in range(batches) for i in range(per_batch))
        assert (row.samples, row.shards) == (10 * batches * per_batch, batches * per_batch)
        assert row.top1 == pytest.approx(100 * expected / row.samples)


def test_runs_configs_latency_and_checkpoint_order(db_url):
    with LocalResults(db_url) as results:
        results.register_run("r", experiment={"anchors": ["deit_tiny", "deit_small"], "epochs": 3},
                             trial_id="trial_00001", hyperparameters={"lr": 1e-4}, status="running")
        results.register_run("r", status="finished")  # fields left out keep their values
        results.put_configs("r", [
            ConfigInfo(config_id=0, name="deit_tiny", kind="anchor", anchors=[0], gmacs=1.26, params=5_700_000),
            {"config_id": 2, "name": "0-1:3,4", "kind": "stitch", "anchors": [0, 1], "gmacs": 2.5},
        ])
        results.put_latency("r", "cpu", {0: 3.5, 2: 6.25})
        # Checkpoints arrive out of order; "final" is the latest, then by step number.
        for ck in ("step-001000", "final", "step-000200"):
            results.ingest([_record(0, 0, run="r", ck=ck, top1={"step-000200": 10, "step-001000": 20,
                                                                 "final": 30}[ck])])
        (summary,) = results.runs()
        assert summary.status == "finished" and summary.trial_id == "trial_00001"
        assert summary.experiment == {"anchors": ["deit_tiny", "deit_small"], "epochs": 3}
        assert summary.hyperparameters == {"lr": 1e-4}
        assert [c.checkpoint for c in summary.checkpoints] == ["step-000200", "step-001000", "final"]
        assert summary.latest == "final" and summary.best_top1 == 30.0
        table = results.table("r")
        assert table.checkpoint == "final"
        assert results.table("r", "step-000200").row(0).top1 == 10.0
        anchor, stitch = table.row(0), table.row(2)
        assert (anchor.kind, anchor.gmacs, anchor.params, anchor.latency_ms) == ("anchor", 1.26, 5_700_000,
                                                                                 {"cpu": 3.5})
        assert stitch.top1 is None and stitch.latency_ms == {"cpu": 6.25}  # described, not evaluated yet


def test_unknown_run_and_checkpoint_name_the_problem(db_url):
    with LocalResults(db_url) as results:
        results.ingest([_record(0, 0)])
        with pytest.raises(ResultsNotFound, match=r"unknown run 'nope'; known runs: r"):
            results.table("nope")
        with pytest.raises(ResultsNotFound, match=r"no checkpoint 'step-9' \(known: final\)"):
            results.table("r", "step-9")


def test_export_parquet_and_csv(db_url, tmp_path):
    with LocalResults(db_url) as results:
        results.put_configs("r", [ConfigInfo(config_id=c, gmacs=1.0 + c) for c in range(3)])
        results.ingest([_record(c, s, top1=30 + c) for c in range(3) for s in range(2)])
        results.put_latency("r", "cpu", {0: 1.0, 1: 2.0})
        pq_path = results.export("r", tmp_path / "r.parquet")
        csv_path = results.export("r", tmp_path / "r.csv")
        with pytest.raises(ValueError, match="use .parquet or .csv"):
            results.export("r", tmp_path / "r.xlsx")
    for table in (pq.read_table(pq_path), pa_csv.read_csv(csv_path)):
        data = table.to_pydict()
        assert data["config_id"] == [0, 1, 2]
        assert data["top1"] == [30.0, 31.0, 32.0]
        assert data["samples"] == [200, 200, 200]
        assert data["latency_ms_cpu"] == [1.0, 2.0, None]
        assert data["frontier"] == [True, True, True]


def test_sqlite_file_survives_reopen(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    with LocalResults(url) as results:
        results.register_run("r", status="running")
        results.ingest([_record(c, s) for c in range(4) for s in range(3)])
        before = results.table("r")
    with LocalResults(tmp_path / "results.db") as results:  # a plain path means the same file
        assert results.table("r") == before
        assert results.get_run("r").status == "running"


def test_bad_inputs_fail_before_writing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResultsStore(f"sqlite:///{tmp_path}/missing/results.db")
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        ResultsStore("mysql://localhost/x")
    with pytest.raises(ValueError, match=r"top1_correct <= top5_correct <= samples"):
        EvalRecord(run="r", checkpoint="final", config_id=0, shard="s", samples=5, top1_correct=6,
                   top5_correct=6)
    with pytest.raises(ValueError, match="not a valid name"):
        RunInfo(run="a/b")
