"""Checkpoints of a training run: DeepSpeed state plus every rank's own state, through Ray Train.

Everything that must survive a restart is either in the DeepSpeed engine (model, optimizer,
lr scheduler; ZeRO shards per rank) or a `Stateful` (the sampler, the `TrainProgress`, random
generators): anything with `state_dict()` / `load_state_dict()`, as in torchtitan.

    states = {"progress": progress, "sampler": sampler, "rng": RandomState()}
    if restore_checkpoint(engine, states):          # Ray's latest checkpoint, if resuming
        ...                                         # progress.step is where to continue
    ...
    report_checkpoint(engine, states, metrics, name=f"step_{progress.step:08d}")

`report_checkpoint` runs on every rank: DeepSpeed's `save_checkpoint` into a temporary
directory (each rank writes its own ZeRO shards; rank 0 the model), the states into
`train_state/rank_<r>.pt`, then `ray.train.report(metrics, checkpoint=...)`, which gathers the
ranks' files into one checkpoint directory under the run's storage path. After a worker
failure (`FailureConfig(max_failures=...)`) or in a new run started with
`resume_from_checkpoint`, `ray.train.get_checkpoint()` returns the latest one and
`restore_checkpoint` puts every rank back where it was: the run continues at the same step
with the same state, and no step is counted twice.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from ray.train import Checkpoint

__all__ = [
    "RandomState",
    "Stateful",
    "TrainProgress",
    "load_states",
    "report_checkpoint",
    "restore_checkpoint",
    "save_states",
]

DEEPSPEED_DIR = "deepspeed"
STATE_DIR = "train_state"


@runtime_checkable
class Stateful(Protocol):
    """Anything that can be saved and restored (samplers, progress, data loaders)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class TrainProgress:
    """Where a run is: optimizer steps, micro-steps, epochs and images done (all ranks)."""

    step: int = 0
    """Optimizer steps completed."""
    micro_step: int = 0
    """Forward/backward passes completed on each rank (the samplers' step)."""
    epoch: int = 0
    samples: int = 0
    """Images trained on, summed over ranks."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for f in fields(self):
            setattr(self, f.name, int(state[f.name]))


class RandomState:
    """The rank's Python, NumPy and torch (CPU and accelerator) generators, for exact resumes."""

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import numpy as np

        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def report_checkpoint(
    engine: DeepSpeedEngine,
    states: Mapping[str, Stateful],
    metrics: Mapping[str, Any],
    name: str,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Save engine and states on this rank and report them to Ray Train (call on every rank).

    `extra(directory)` may write more files into the checkpoint (e.g. rank 0's whole SNNet).

    `name` is the checkpoint's directory under the run (the same on every rank, e.g.
    f"step_{step:08d}"), so the ranks' files land together.
    """
    import ray.train

    with tempfile.TemporaryDirectory(prefix="snnet_ckpt_") as tmp:
        engine.save_checkpoint(str(Path(tmp, DEEPSPEED_DIR)), tag=name)
        save_states(tmp, states)
        if extra is not None:
            extra(Path(tmp))
        ray.train.report(
            dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name
        )


def restore_checkpoint(
    engine: DeepSpeedEngine,
    states: Mapping[str, Stateful],
    checkpoint: Checkpoint | None = None,
) -> bool:
    """Load Ray Train's latest checkpoint (or `checkpoint`) into the engine and states.

    Returns False, touching nothing, when there is no checkpoint (a fresh run).
    """
    import ray.train

    checkpoint = checkpoint or ray.train.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as directory:
        path, _ = engine.load_checkpoint(
            str(Path(directory, DEEPSPEED_DIR)), load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}/{DEEPSPEED_DIR}")
        load_states(directory, states)
    return True


def save_states(directory: str | Path, states: Mapping[str, Stateful]) -> Path:
    """Write this rank's states to `directory/train_state/rank_<r>.pt`."""
    path = Path(directory, STATE_DIR, f"rank_{_rank()}.pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: obj.state_dict() for key, obj in states.items()}, path)
    return path


def load_states(directory: str | Path, states: Mapping[str, Stateful]) -> None:
    """Restore this rank's states from `directory` (written by `save_states`)."""
    path = Path(directory, STATE_DIR, f"rank_{_rank()}.pt")
    if not path.is_file():
        found = sorted(p.name for p in Path(directory, STATE_DIR).glob("rank_*.pt"))
        raise FileNotFoundError(
            f"no training state for rank {_rank()} in {path.parent} (found {found}); resume with the "
            "same number of workers as the checkpoint"
        )
    saved = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are not tensors only
    missing = sorted(set(states) - set(saved))
    if missing:
        raise ValueError(f"checkpoint {path} has no state for {missing}; it holds {sorted(saved)}")
    for key, obj in states.items():
        obj.load_state_dict(saved[key])


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
