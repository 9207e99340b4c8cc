"""Every torch.distributed collective goes through `snnet_ray.collectives`, on the worker's device.

NCCL serves CUDA tensors only: a collective anywhere else in the package is where a CPU tensor
slips through and the first GPU run dies. The guard reads the package's source; the functions
themselves are checked in one process (identity) and, with the real process group, by the local
launcher's tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from snnet_ray import collectives

PACKAGE = Path(collectives.__file__).parent
COLLECTIVES = (
    "all_reduce|all_gather|all_gather_into_tensor|all_gather_object|broadcast|broadcast_object_list|barrier|"
    "monitored_barrier|reduce|reduce_scatter|reduce_scatter_tensor|gather|gather_object|scatter|scatter_object_list|"
    "all_to_all|all_to_all_single|send|recv|isend|irecv|batch_isend_irecv"
)


def _offences(source: str) -> list[str]:
    aliases = {"torch.distributed"}
    for m in re.finditer(r"^\s*import torch\.distributed as (\w+)", source, re.M):
        aliases.add(m.group(1))
    for m in re.finditer(r"^\s*from torch import distributed as (\w+)", source, re.M):
        aliases.add(m.group(1))
    found = []
    calls = re.compile(rf"(?<![\w.])({'|'.join(re.escape(a) for a in aliases)})\.({COLLECTIVES})\s*\(")
    found += [m.group(0) for m in calls.finditer(source)]
    direct = re.compile(rf"^\s*from torch\.distributed(\.distributed_c10d)? import .*\b({COLLECTIVES})\b", re.M)
    found += [m.group(0).strip() for m in direct.finditer(source)]
    return found


def test_no_collective_outside_the_collectives_module():
    offences = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "collectives.py" and path.parent == PACKAGE:
            continue
        found = _offences(path.read_text())
        if found:
            offences[str(path.relative_to(PACKAGE.parent))] = found
    assert not offences, f"call these through snnet_ray.collectives with the worker's device: {offences}"


def test_the_guard_catches_aliases_and_direct_imports():
    assert _offences("import torch.distributed as d\nd.all_reduce(t)\n") == ["d.all_reduce("]
    assert _offences("torch.distributed.barrier()\n") == ["torch.distributed.barrier("]
    assert _offences("from torch.distributed import broadcast\n")
    assert not _offences("collectives.all_reduce(t, device=dev)\ndist.get_rank()\n")


def test_outside_a_process_group_collectives_are_the_identity():
    t = torch.arange(3.0)
    assert not collectives.is_distributed()
    assert collectives.rank() == 0 and collectives.world_size() == 1
    assert collectives.all_reduce(t, device="cpu") is t
    assert collectives.broadcast_json(["shard-000.tar"]) == ["shard-000.tar"]
    assert collectives.all_gather(t).shape == (1, 3)
    assert collectives.default_device() == torch.device("cpu")
    collectives.barrier("cpu")
