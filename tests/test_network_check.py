"""The start-up network check (snnet_ray/train/network_check.py) and the CUDA driver check.

On this machine: two gloo processes run the real check and record gloo's figures in the results
service; NCCL's log parsing, the socket-fallback warning and the driver rules are checked on the
text and versions a GPU cluster produces.
"""

from __future__ import annotations

import os
import re
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from snnet_ray.cuda_check import cuda_problem
from snnet_ray.results import LocalResults, create_app
from snnet_ray.train.network_check import (
    NetworkCheck,
    _captured_output,
    bus_bandwidth_gbps,
    network_warnings,
    parse_nccl_log,
    startup_check,
)
from snnet_ray.train.trainer import configure_worker_logging

EFA_LOG = """\
ip-10-0-1-12:412:412 [0] NCCL INFO NCCL version 2.27.3+cuda12.9
ip-10-0-1-12:412:412 [0] NCCL INFO NET/OFI Initializing aws-ofi-nccl 1.16.2
ip-10-0-1-12:412:412 [0] NCCL INFO NET/OFI Selected Provider is efa (found 4 nics)
ip-10-0-1-12:412:412 [0] NCCL INFO Using network AWS Libfabric
ip-10-0-1-12:412:690 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC
ip-10-0-1-12:412:690 [0] NCCL INFO Channel 00/0 : 8[0] -> 0[0] [receive] via NET/AWS Libfabric/0/GDRDMA
ip-10-0-1-12:412:690 [0] NCCL INFO Channel 00/0 : 0[0] -> 8[0] [send] via NET/AWS Libfabric/0/GDRDMA
"""
SOCKET_LOG = """\
node-a:77:77 [0] NCCL INFO NCCL version 2.27.3+cuda12.9
node-a:77:77 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.
node-a:77:77 [0] NCCL INFO Using network Socket
node-a:77:95 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/Socket/0
node-a:77:95 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via SHM/direct/direct
"""
IB_LOG = """\
gpu07:5:5 [0] NCCL INFO Using network IB
gpu07:5:31 [0] NCCL INFO Channel 00/0 : 0[0] -> 8[0] [send] via NET/IB/0/GDRDMA
"""


def _worker(rank: int, world: int, port: int, db: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    configure_worker_logging(rank)  # as the trainer does: rank 0's info lines on stdout
    try:
        startup_check(torch.device("cpu"), run="net-check", results_url=f"sqlite:///{db}", use_gpu=False)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_runs_on_two_gloo_processes_and_records_gloo_figures(tmp_path, capfd):
    db = tmp_path / "results.db"
    mp.spawn(_worker, args=(2, _free_port(), str(db)), nprocs=2, join=True)
    records = LocalResults(db).network("net-check")
    assert [r.worker for r in records] == ["rank0", "rank1"]
    for r in records:
        assert (r.backend, r.transport, r.world_size, r.nodes) == ("gloo", "TCP", 2, 1)
        assert r.message_bytes == 4 << 20 and r.seconds > 0 and r.bus_bw_gbps > 0
        assert r.nccl_version is None and r.driver is None and r.warnings == []
        assert r.bus_bw_gbps == pytest.approx(bus_bandwidth_gbps(r.message_bytes, r.seconds, 2))
    out = capfd.readouterr().out
    assert out.count("[snnet-ray] network: gloo over TCP: 2 ranks on 1 node(s)") == 1  # rank 0 only


def test_network_records_through_the_http_api(tmp_path):
    from fastapi.testclient import TestClient

    check = NetworkCheck("nccl", "ip-10-0-1-12", 16, 2, 256 << 20, 0.012, 41.9, "EFA", ["NET/AWS Libfabric"],
                         "2.27.3", "570.86.15")
    with TestClient(create_app(LocalResults(tmp_path / "r.db"))) as client:
        body = [check.record("swin", "rank0").model_dump(mode="json")]
        assert client.put("/api/network", json=body).json() == {"network": 1}
        got = client.get("/api/runs/swin/network").json()
        assert got[0]["transport"] == "EFA" and got[0]["bus_bw_gbps"] == 41.9 and got[0]["driver"] == "570.86.15"
        assert client.get("/api/runs/nope/network").status_code == 404
        bad = [{**body[0], "bus_bw_gbps": -1}]
        assert client.put("/api/network", json=bad).status_code == 422


def test_nccl_logs_name_the_transport():
    assert parse_nccl_log(EFA_LOG) == ("EFA", ["P2P/IPC", "NET/AWS Libfabric"], "2.27.3")
    assert parse_nccl_log(SOCKET_LOG) == ("Socket", ["NET/Socket", "SHM"], "2.27.3")
    assert parse_nccl_log(IB_LOG)[0] == "IB"
    assert parse_nccl_log("") == (None, [], None)


def test_socket_fallback_on_several_nodes_is_a_warning():
    def check(transport: str, nodes: int, bw: float, backend: str = "nccl") -> NetworkCheck:
        return NetworkCheck(backend, "h", 16, nodes, 256 << 20, 0.1, bw, transport)

    assert "NCCL uses sockets between nodes" in network_warnings(check("Socket", 2, 3.1))[0]
    assert "FI_PROVIDER=efa" in network_warnings(check("Socket", 2, 3.1))[0]
    assert "what TCP sockets give" in network_warnings(check("unknown", 4, 2.0))[0]
    assert network_warnings(check("unknown", 4, 40.0)) == []
    assert network_warnings(check("EFA", 2, 41.0)) == []
    assert network_warnings(check("Socket", 1, 3.0)) == []  # one node: NVLink/SHM, sockets unused
    assert network_warnings(check("TCP", 2, 1.0, backend="gloo")) == []


def test_native_output_is_captured_and_passed_on(capfd):
    with _captured_output() as log:
        os.write(1, b"node:1:1 [0] NCCL INFO Using network Socket\n")
    assert "Using network Socket" in log.text
    assert "Using network Socket" in capfd.readouterr().out


@pytest.mark.parametrize(
    ("cuda", "driver", "available", "expected"),
    [
        ("13.0", "570.86.15", False, "570.86.15 is too old .*CUDA 13.0 needs driver 580.65.06 .*TORCH_CUDA=cu128"),
        ("12.8", "470.82.01", False, "too old .*use a torch build for an older CUDA"),
        (None, None, False, "CPU-only build .*TORCH_CUDA=cu128"),
        ("12.8", None, False, "no NVIDIA driver on this node .*nvidia.com/gpu"),
        ("12.8", "570.86.15", False, r"is_available\(\) is False with NVIDIA driver 570.86.15"),
        ("12.8", "570.86.15", True, None),
        ("13.0", "580.95.05", True, None),
    ],
)
def test_driver_rules_name_the_fix(cuda, driver, available, expected):
    problem = cuda_problem(cuda, driver, available)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert re.search(expected, problem), problem


def test_allreduce_bandwidth_bench_runs_on_cpu(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "allreduce_bw.json"
    bench = Path(__file__).resolve().parents[1] / "bench" / "allreduce_bw.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--cpu", "--procs", "2", "--max-mb", "2", "--iters", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT allreduce_bus_bw_gbps \d+\.\d\d target >= 26\.2", last), last
    figures = json.loads(out.read_text())
    assert [r["bytes"] for r in figures["rows"]] == [1 << 20, 2 << 20]
    assert figures["backend"] == "gloo" and figures["world_size"] == 2
    assert all(r["bus_bw_gbps"] > 0 for r in figures["rows"])
    assert figures["model_bus_bw_gbps"] == figures["rows"][-1]["bus_bw_gbps"]
