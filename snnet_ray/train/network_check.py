"""What the gradient all-reduce runs over: a start-up check on every training worker.

SN-Net training synchronises gradients with one all-reduce per step (ZeRO-2 reduces ~236 MB of
bf16 gradients for DeiT-Ti/S/B). Over EFA or InfiniBand that takes a few milliseconds; when NCCL
cannot load its network plugin it falls back to TCP sockets between nodes without failing, and the
same reduction takes 70-230 ms, more than the compute of any step. This check makes that visible:

    check = check_network(device)            # every rank: an all-reduce probe through collectives.py
    check.transport, check.bus_bw_gbps       # "EFA" | "IB" | "Socket" | "local" | "TCP" (gloo), GB/s

* NCCL version and transport: with `NCCL_DEBUG=INFO` (the cluster runtime envs set it, with
  `NCCL_DEBUG_SUBSYS=INIT,NET`) NCCL logs the network it uses ("Using network AWS Libfabric") and
  how each channel goes ("via NET/IB/0", "via P2P/IPC"); the probe is the worker's first NCCL
  collective, so its communicator's lines are captured from the process's output, parsed, and
  passed on to the log unchanged.
* Bus bandwidth: the nccl-tests figure, algorithm bandwidth x 2(n-1)/n, of a few-hundred-MB
  all-reduce on GPUs (a few MB with gloo on CPUs); bench/allreduce_bw.py sweeps message sizes.
* A warning when a multi-node NCCL run uses sockets (or, with no log to read, measures a bus
  bandwidth only sockets give).

`startup_check` is what the trainer calls once: the CUDA driver check on GPU workers
(snnet_ray/cuda_check.py), this check, a log line, and a `NetworkRecord` per worker in the results
service.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from snnet_ray import collectives

__all__ = [
    "SOCKET_SUSPECT_GBPS",
    "NetworkCheck",
    "bus_bandwidth_gbps",
    "check_network",
    "count_nodes",
    "network_warnings",
    "parse_nccl_log",
    "startup_check",
]

GPU_PROBE_BYTES = 256 << 20  # large enough that NCCL reaches its bus bandwidth on EFA/IB
CPU_PROBE_BYTES = 4 << 20
# Bus bandwidth between nodes below which NCCL is most likely on TCP sockets: EFA on p4d/p5 and
# HDR/NDR InfiniBand give tens of GB/s, sockets a few.
SOCKET_SUSPECT_GBPS = 8.0

# NCCL_DEBUG=INFO lines: "NCCL INFO Using network AWS Libfabric", "NCCL version 2.27.3+cuda12.9",
# "Channel 00/0 : 0[0] -> 8[0] [send] via NET/AWS Libfabric/0/GDRDMA", "... via P2P/IPC", "via SHM/direct".
_NETWORK_RE = re.compile(r"NCCL INFO Using network (\S[^\n]*?)\s*$", re.M)
_VIA_RE = re.compile(r"\bvia (NET/[^/\n]+|P2P/[A-Za-z]+|SHM|direct shared memory)")
_PROVIDER_RE = re.compile(r"NET/OFI Selected [Pp]rovider is (\w+)")
_VERSION_RE = re.compile(r"NCCL version (\d+\.\d+\.\d+)")


@dataclass
class NetworkCheck:
    """One worker's view of the collective network (see the module docstring)."""

    backend: str
    host: str
    world_size: int
    nodes: int
    message_bytes: int
    seconds: float  # per all-reduce, the slowest rank's mean
    bus_bw_gbps: float
    transport: str  # between nodes: EFA, IB, Socket, ... ; "local" on one node; "TCP" for gloo
    transports: list[str] = field(default_factory=list)  # every path NCCL logged
    nccl_version: str | None = None
    driver: str | None = None
    warnings: list[str] = field(default_factory=list)

    def record(self, run: str, worker: str) -> Any:
        """The results service's `NetworkRecord` of this check."""
        from snnet_ray.results.schema import NetworkRecord

        return NetworkRecord(
            run=run, worker=worker, host=self.host[:200], backend=self.backend[:32],
            nccl_version=(self.nccl_version or "")[:32] or None, driver=(self.driver or "")[:32] or None,
            transport=self.transport[:64], transports=[t[:64] for t in self.transports[:32]],
            world_size=self.world_size, nodes=self.nodes, message_bytes=self.message_bytes,
            seconds=self.seconds, bus_bw_gbps=self.bus_bw_gbps, warnings=[w[:500] for w in self.warnings[:20]],
            time=time.time(),
        )

    def format(self) -> str:
        nccl = f" {self.nccl_version}" if self.nccl_version else ""
        via = f" ({', '.join(self.transports)})" if self.transports else ""
        return (
            f"{self.backend}{nccl} over {self.transport}{via}: {self.world_size} ranks on {self.nodes} node(s), "
            f"all-reduce of {self.message_bytes / 2**20:.0f} MiB in {self.seconds * 1e3:.2f} ms, "
            f"bus bandwidth {self.bus_bw_gbps:.2f} GB/s"
        )


def bus_bandwidth_gbps(message_bytes: int, seconds: float, world_size: int) -> float:
    """nccl-tests' all-reduce bus bandwidth (GB/s): bytes / time x 2(n-1)/n, comparable across sizes
    of the group and with the link's own bandwidth."""
    if world_size < 2 or seconds <= 0:
        return 0.0
    return message_bytes / seconds * 2 * (world_size - 1) / world_size / 1e9


def parse_nccl_log(text: str) -> tuple[str | None, list[str], str | None]:
    """(network between nodes, every channel path, NCCL version) from `NCCL_DEBUG=INFO` output.

    The network is normalised to EFA (the aws-ofi-nccl plugin on libfabric's efa provider), OFI
    (that plugin on another provider), IB (InfiniBand or RoCE verbs), Socket, or NCCL's own name.
    """
    networks = _NETWORK_RE.findall(text)
    paths = list(dict.fromkeys(v.strip() for v in _VIA_RE.findall(text)))
    providers = {p.lower() for p in _PROVIDER_RE.findall(text)}
    version = _VERSION_RE.search(text)
    net_paths = [p[len("NET/"):] for p in paths if p.startswith("NET/")]
    name = net_paths[0] if net_paths else (networks[-1] if networks else None)
    return _normalise(name, providers), paths, version.group(1) if version else None


def network_warnings(check: NetworkCheck) -> list[str]:
    """What a platform engineer should hear about this check (empty when all is well)."""
    if check.backend != "nccl" or check.nodes < 2:
        return []  # gloo is TCP by design; one node never leaves NVLink/PCIe/SHM
    fix = (
        "gradient sync runs over TCP between nodes, several times slower than EFA/InfiniBand. Check that the "
        "nodes have EFA or InfiniBand devices (/dev/infiniband), that the image has the aws-ofi-nccl plugin "
        "(EFA) and FI_PROVIDER=efa is set, or NCCL_IB_HCA names the HCAs (InfiniBand); cluster/README.md, "
        "'Networking'"
    )
    if check.transport == "Socket":
        return [f"NCCL uses sockets between nodes ({check.bus_bw_gbps:.1f} GB/s bus bandwidth): {fix}"]
    if check.transport == "unknown" and check.bus_bw_gbps < SOCKET_SUSPECT_GBPS:
        return [
            f"bus bandwidth {check.bus_bw_gbps:.1f} GB/s across {check.nodes} nodes is what TCP sockets give "
            f"(NCCL's transport was not logged: set NCCL_DEBUG=INFO to see it); {fix}"
        ]
    return []


def check_network(
    device: torch.device | str, message_bytes: int | None = None, iterations: int = 5, warmup: int = 2
) -> NetworkCheck:
    """Probe the process group with all-reduces of `message_bytes` on `device` (every rank calls it).

    Default size: 256 MiB on a GPU, 4 MiB on the CPU. Host syncs and timing are fine here: this
    runs once, before training.
    """
    device = torch.device(device)
    backend = _backend(device)
    world = collectives.world_size()
    size = message_bytes or (GPU_PROBE_BYTES if device.type == "cuda" else CPU_PROBE_BYTES)
    if size <= 0 or iterations < 1 or warmup < 0:
        raise ValueError(f"probe needs message_bytes > 0 and iterations >= 1, got {size} and {iterations}")
    host = socket.gethostname()
    capture = _captured_output() if backend == "nccl" else contextlib.nullcontext(None)
    # NCCL logs its version and network when its communicator is set up, at the first collective
    # (Ray and the local launcher initialise the process group lazily): count_nodes is that one.
    with capture as log:
        nodes = count_nodes(device, host)
        buffer = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
        for _ in range(warmup):
            collectives.all_reduce(buffer, device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            collectives.all_reduce(buffer, device)
        _sync(device)
        seconds = (time.perf_counter() - start) / iterations
    slowest = collectives.all_reduce(torch.tensor([seconds], dtype=torch.float64, device=device), device, op="max")
    seconds = float(slowest.cpu()[0])
    del buffer
    network, paths, version = parse_nccl_log(log.text if log is not None else "")
    if backend == "nccl":
        version = version or ".".join(str(v) for v in torch.cuda.nccl.version())
        transport = network or ("local" if nodes == 1 else "unknown")
    else:
        transport = "TCP" if backend == "gloo" and world > 1 else "none"
    check = NetworkCheck(
        backend=backend, host=host, world_size=world, nodes=nodes, message_bytes=buffer_bytes(size),
        seconds=seconds, bus_bw_gbps=bus_bandwidth_gbps(buffer_bytes(size), seconds, world),
        transport=transport, transports=paths, nccl_version=version,
    )
    check.warnings = network_warnings(check)
    return check


def buffer_bytes(size: int) -> int:
    """The bytes a probe of `size` really moves (whole float32 elements)."""
    return max(1, size // 4) * 4


def startup_check(
    device: torch.device | str,
    *,
    run: str,
    results_url: str | None = None,
    use_gpu: bool = False,
    message_bytes: int | None = None,
) -> NetworkCheck:
    """The trainer's start-up check, on every worker: the CUDA driver (GPU workers: raises
    `CudaSetupError` naming the fix), the network probe, one log line from rank 0, warnings from
    every rank that has one, and this worker's `NetworkRecord` in the results service at
    `results_url` when given."""
    driver = None
    if use_gpu:
        from snnet_ray.cuda_check import check_cuda

        status = check_cuda()
        driver = status.driver
        if status.warning and collectives.rank() == 0:
            _say(f"WARNING: {status.warning}")
    check = check_network(device, message_bytes=message_bytes)
    check.driver = driver
    rank = collectives.rank()
    if rank == 0:
        _say(f"network: {check.format()}")
    for warning in check.warnings:
        _say(f"WARNING (rank {rank}, {check.host}): {warning}")
    if results_url:
        from snnet_ray.results import connect

        results = connect(results_url)
        try:
            results.put_network([check.record(run, f"rank{rank}")])
        except (ConnectionError, ValueError) as err:
            # A diagnostic must not stop training (a service older than /api/network answers 404);
            # the log has the figures.
            _say(f"WARNING: network check not recorded in the results service: {err}")
        finally:
            results.close()
    return check


# ---- helpers -------------------------------------------------------------------------------------


def _normalise(name: str | None, providers: set[str]) -> str | None:
    if name is None:
        return None
    low = name.lower()
    if "libfabric" in low or "ofi" in low:
        return "EFA" if "efa" in providers or "aws" in low else "OFI"
    if low.startswith("ib") or "rdma" in low:
        return "IB"
    if low.startswith("socket"):
        return "Socket"
    return name


def _backend(device: torch.device) -> str:
    if not collectives.is_distributed():
        return "none"
    name = str(torch.distributed.get_backend())
    # A group serving both ("cpu:gloo,cuda:nccl") uses the one of the probe's device.
    per_device = dict(part.split(":", 1) for part in name.split(",") if ":" in part)
    return per_device.get(device.type, name)


def count_nodes(device: torch.device | str, host: str | None = None) -> int:
    """Distinct host names over the process group (every rank calls it)."""
    host = host or socket.gethostname()
    # A stable hash: Python's hash() differs per process.
    digest = int.from_bytes(hashlib.sha1(host.encode()).digest()[:7], "big")
    hosts = collectives.all_gather(torch.tensor([digest], dtype=torch.int64, device=device), torch.device(device))
    return len(set(hosts.flatten().tolist()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output() -> Iterator[_Captured]:
    """Everything the process writes to fds 1 and 2 meanwhile (NCCL logs to stdout from C), copied
    back to them afterwards so the job's log still shows it."""
    captured = _Captured()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as tmp:
        try:
            for fd in (1, 2):
                os.dup2(tmp.fileno(), fd)
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            data = tmp.read()
            captured.text = data.decode(errors="replace")
            view = memoryview(data)
            while view:  # os.write may write less than it is given
                view = view[os.write(1, view):]


def _say(message: str) -> None:
    # The trainer's logger (one `[snnet-ray]` line, rank 0's info and every rank's warnings): a print
    # reached the job's log twice, through stdout and through Ray Train's print patch.
    if message.startswith("WARNING"):
        logging.getLogger("snnet_ray.train").warning(message)
    else:
        logging.getLogger("snnet_ray.train").info(message)
