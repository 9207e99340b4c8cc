"""A private `ray start --head` for tests: its own ports and token, stopped without touching other Rays.

`ray stop` stops every Ray on the machine; the head here runs with `--block` in a session of its
own, so killing that process group stops exactly its processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(tmp: Path, num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """Yields (dashboard address, environment for `ray` commands and jobs)."""
    token = tmp / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",  # the job's `python` is this venv's
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    # A temp dir of its own (short: Ray's socket paths must fit 107 bytes): `ray start` records the
    # cluster there, not in /tmp/ray/ray_current_cluster where later `ray.init()` calls would find it.
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    cmd = [
        f"{VENV_BIN}/ray", "start", "--head", "--block", f"--port={free_port()}", f"--dashboard-port={dashboard}",
        f"--num-cpus={num_cpus}", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}",
    ]  # fmt: skip
    log = open(tmp / "ray_head.log", "w")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        request = urllib.request.Request(
            f"{address}/api/version", headers={"Authorization": f"Bearer {token.read_text()}"}
        )
        for _ in range(120):
            if head.poll() is not None:
                raise RuntimeError(f"ray start failed:\n{(tmp / 'ray_head.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(request, timeout=2).close()
                break
            time.sleep(1)
        yield address, env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # what SIGTERM left (the raylet may linger)
        head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
