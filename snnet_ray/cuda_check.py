"""Does this node's NVIDIA driver run this torch's CUDA build? Checked once per GPU worker at start.

A torch wheel carries its own CUDA libraries and needs only the node's kernel driver, but a driver
at least as new as its CUDA major version requires (CUDA's minor-version compatibility). The cluster
images choose the build with `TORCH_CUDA` (cluster/Dockerfile, cluster/aws-gpu.yaml):

    build   CUDA   minimum driver   driver of the CUDA release (recommended)
    cu126   12.6   525.60.13        560.28.03
    cu128   12.8   525.60.13        570.26      (Blackwell GPUs need 570 or newer)
    cu130   13.0   580.65.06        580.65.06

Without this check a too-old driver shows up as `torch.cuda.is_available() == False` and a worker
that quietly trains on its CPU, or as a warning deep in the log; here it is an error that names the
node's driver, the build and the fix.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import torch

__all__ = ["CUDA_BUILDS", "CudaSetupError", "CudaStatus", "check_cuda", "cuda_problem", "driver_version"]

# build -> (CUDA version, minimum driver, the CUDA release's own driver)
CUDA_BUILDS: dict[str, tuple[str, str, str]] = {
    "cu126": ("12.6", "525.60.13", "560.28.03"),
    "cu128": ("12.8", "525.60.13", "570.26"),
    "cu130": ("13.0", "580.65.06", "580.65.06"),
}
# Minimum driver per CUDA major version (minor-version compatibility).
_MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
_FIX_IMAGE = "rebuild the image with `docker build --build-arg TORCH_CUDA={build}` (cluster/README.md, 'Drivers')"


class CudaSetupError(RuntimeError):
    """A GPU worker that cannot use its GPUs; the message names the cause and the fix."""


@dataclass(frozen=True)
class CudaStatus:
    torch: str
    cuda: str | None  # torch's CUDA build, e.g. "12.8"
    driver: str | None  # the node's NVIDIA driver, e.g. "570.86.15"
    devices: int
    warning: str | None = None


def driver_version() -> str | None:
    """The node's NVIDIA kernel driver version, or None when there is none (no GPU, or hidden)."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", f.read())
        if match:
            return match.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    versions = [line.strip() for line in out.splitlines() if re.fullmatch(r"\d+\.\d+(\.\d+)?", line.strip())]
    return versions[0] if versions else None


def cuda_problem(torch_cuda: str | None, driver: str | None, available: bool, reason: str = "") -> str | None:
    """Why a GPU worker cannot use CUDA, with the fix; None when it can. Pure, so it is testable anywhere."""
    build = f"torch {torch.__version__}"
    if torch_cuda is None:
        return (
            f"{build} is a CPU-only build but this worker asked for GPUs (scaling.use_gpu). Fix: install a CUDA "
            f"build (pip install torch --index-url https://download.pytorch.org/whl/cu128) or "
            + _FIX_IMAGE.format(build="cu128")
        )
    if driver is None:
        if available:
            return None
        return (
            f"no NVIDIA driver on this node ({build} for CUDA {torch_cuda} needs one): the node has no GPU or "
            "its container does not see it. Fix: schedule GPU workers on GPU nodes (KubeRay: an nvidia.com/gpu "
            "limit and the NVIDIA device plugin; docker: the NVIDIA container runtime)"
        )
    need = _MIN_DRIVER.get(int(torch_cuda.split(".")[0]))
    if need is not None and _version(driver) < _version(need):
        usable = [b for b, (_, minimum, _) in CUDA_BUILDS.items() if _version(driver) >= _version(minimum)]
        fix = _FIX_IMAGE.format(build=usable[-1]) if usable else "use a torch build for an older CUDA"
        return (
            f"this node's NVIDIA driver {driver} is too old for {build} (CUDA {torch_cuda} needs driver {need} or "
            f"newer). Fix: {fix}, or give the nodes a newer driver (a newer GPU AMI or node image)"
        )
    if not available:
        return (
            f"torch.cuda.is_available() is False with NVIDIA driver {driver} and {build} (CUDA {torch_cuda})"
            f"{': ' + reason if reason else ''}. Fix: check `nvidia-smi` on the node and that the container sees "
            "the GPUs (CUDA_VISIBLE_DEVICES, the NVIDIA container runtime)"
        )
    return None


def check_cuda() -> CudaStatus:
    """Raise `CudaSetupError` unless this process can use CUDA; the status otherwise (with a warning
    when the driver is older than the one of torch's CUDA release: PTX JIT and some kernels may fail)."""
    available = torch.cuda.is_available()
    reason = ""
    if not available and torch.version.cuda is not None:
        try:
            torch.cuda.init()
        except Exception as err:  # torch's own reason is what the user needs
            reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    driver = driver_version()
    problem = cuda_problem(torch.version.cuda, driver, available, reason)
    if problem:
        raise CudaSetupError(problem)
    warning = None
    release = {cuda: rec for cuda, _, rec in CUDA_BUILDS.values()}.get(torch.version.cuda or "")
    if driver and release and _version(driver) < _version(release):
        warning = (
            f"NVIDIA driver {driver} runs CUDA {torch.version.cuda} through minor-version compatibility; "
            f"{release} or newer is recommended"
        )
    return CudaStatus(torch.__version__, torch.version.cuda, driver, torch.cuda.device_count(), warning)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])
