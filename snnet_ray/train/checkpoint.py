"""Checkpoints of a training run that reshard: written by every rank at once, resumed on any world size.

A checkpoint directory holds

    dcp/                      torch.distributed.checkpoint: fp32 weights and AdamW moments per parameter
    train_state/state.json    progress, sampler counts, lr schedule, engine counters (plain JSON, rank 0)
    train_state/rank_<r>.pt   rank r's random generators (tensors only; used when the world size is the same)
    model/                    the whole SNNet for `snnet-ray eval` and `export` (rank 0, see saving.py)

Why `torch.distributed.checkpoint` (DCP) rather than DeepSpeed's universal checkpoint: DCP stores
every tensor under its parameter's name with its full shape, and its planner spreads the writes of
tensors that several ranks hold over those ranks, so every rank writes its own share in parallel and
any number of ranks can read it back; resharding needs no offline conversion step (DeepSpeed's
`ds_to_universal` reads every shard in one process) and nothing is unpickled: DeepSpeed's own
checkpoint files are pickles that only a full unpickler reads, DCP's tensor files are read as tensors
and its `.metadata` index here through an unpickler that admits DCP's metadata classes only. The
per-parameter fp32 weights and optimizer moments come from DeepSpeed's public tensor-fragment API
(`deepspeed.utils.safe_get_full_*` / `safe_set_full_*`), which works for ZeRO 0-3 and bf16.

What depends on the world size is kept out of the shared state: the sampler stores the per-config
counts summed over ranks, progress counts optimizer steps and images of the whole job, and each
rank's random generators are restored only when the world size matches (otherwise every rank is
reseeded from (seed, step, rank), since its data and draws differ anyway).

    states = {"progress": progress, "sampler": sampler, "rng": RandomState(seed)}
    save_checkpoint(engine, states, directory)       # every rank; returns the full fp32 weights
    load_checkpoint(engine, states, directory)       # every rank, any world size

`report_checkpoint` / `restore_checkpoint` do the same through Ray Train (`ray.train.report`
gathers the ranks' files into one directory under the run's storage path).

Which files are trusted: none is unpickled. `state.json` is JSON, `rank_<r>.pt` and DCP's tensor
files are read with `torch.load(weights_only=True)`, DCP's `.metadata` admits DCP's own metadata
classes only, and `model/` is safetensors plus JSON.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from snnet_ray import collectives

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from ray.train import Checkpoint

__all__ = [
    "RandomState",
    "Stateful",
    "TrainProgress",
    "load_checkpoint",
    "load_states",
    "read_tensors",
    "read_train_state",
    "report_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "save_states",
]

DCP_DIR = "dcp"
STATE_DIR = "train_state"
STATE_FILE = "state.json"
FORMAT = 2
MAX_STATE_BYTES = 64 << 20  # a state.json larger than this is not one of ours


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
            value = state[f.name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"progress.{f.name} must be a non-negative integer, got {value!r}")
            setattr(self, f.name, value)


class RandomState:
    """The rank's Python, NumPy and torch (CPU and accelerator) generators, for exact resumes.

    Per rank: restored only when the world size is the one it was saved with; otherwise
    `reseed(step, rank)` gives every rank fresh generators derived from (seed, step, rank).
    Saved as tensors and plain data, so it loads with `torch.load(weights_only=True)`.
    """

    per_rank: ClassVar[bool] = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        version, words, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "python": [version, torch.tensor(words, dtype=torch.int64), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import numpy as np

        version, words, gauss = state["python"]
        random.setstate((int(version), tuple(int(w) for w in words.tolist()), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((str(name), keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    def reseed(self, step: int, rank: int) -> None:
        import numpy as np

        seed = (self.seed * 1_000_003 + step * 8191 + rank) % (1 << 31)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


# -- whole checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(
    engine: DeepSpeedEngine,
    states: Mapping[str, Stateful],
    directory: str | Path,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Write this rank's part of a checkpoint into `directory` (call on every rank at once).

    Returns the SNNet's full fp32 state dict (on the worker's device), from which rank 0 writes
    `model/` without gathering the weights a second time.
    """
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    tensors, model_state = _engine_tensors(engine)
    save_states(directory, states, engine=engine, device=device)
    if collectives.is_distributed():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(directory / DCP_DIR)))
    else:
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(directory / DCP_DIR)), no_dist=True)
    return model_state


def load_checkpoint(
    engine: DeepSpeedEngine,
    states: Mapping[str, Stateful],
    directory: str | Path,
) -> None:
    """Restore `engine` and `states` from `directory`, whatever world size wrote it (every rank)."""
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    if not (directory / DCP_DIR / ".metadata").is_file():
        raise FileNotFoundError(
            f"{directory} holds no resharding checkpoint ({DCP_DIR}/.metadata is missing); it was not written "
            "by this version of snnet-ray or its writing did not finish"
        )
    meta = load_states(directory, states)
    _prime_optimizer(engine)
    template = _engine_template(engine)
    reader = _safe_reader(str(directory / DCP_DIR))
    try:
        dcp.load(template, storage_reader=reader, no_dist=not collectives.is_distributed())
    except Exception as err:  # DCP wraps per-rank failures; name the likely cause
        raise RuntimeError(
            f"cannot load the weights of {directory}: {err}. Is it a checkpoint of the same SN-Net (anchors, "
            "kernel size, stride)?"
        ) from err
    _set_engine_tensors(engine, template)
    _set_engine_counters(engine, meta["engine"])


def report_checkpoint(
    engine: DeepSpeedEngine,
    states: Mapping[str, Stateful],
    metrics: Mapping[str, Any],
    name: str,
    extra: Callable[[Path, dict[str, torch.Tensor]], None] | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Save a checkpoint on this rank and report it to Ray Train (call on every rank).

    `extra(directory, model_state)` may write more files (rank 0's whole SNNet from `model_state`).
    `name` is the checkpoint's directory under the run (the same on every rank), so the ranks'
    files land together.
    """
    import ray.train

    with tempfile.TemporaryDirectory(prefix="snnet_ckpt_") as tmp:
        model_state = save_checkpoint(engine, states, tmp, device=device)
        if extra is not None:
            extra(Path(tmp), model_state)
        del model_state
        ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


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
        load_checkpoint(engine, states, directory)
    return True


def read_tensors(directory: str | Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with `prefix` (prefix removed), on the CPU, in one
    process: e.g. the SNNet's fp32 weights (`model.`) or AdamW's moments (`optim.exp_avg.`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = _safe_reader(str(Path(directory, DCP_DIR)))
    entries = reader.read_metadata().state_dict_metadata
    template = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in entries.items()
        if isinstance(meta, TensorStorageMetadata) and key.startswith(prefix)
    }
    dcp.load(template, storage_reader=_safe_reader(str(Path(directory, DCP_DIR))), no_dist=True)
    return {key[len(prefix) :]: value for key, value in template.items()}


def read_train_state(directory: str | Path) -> dict[str, Any]:
    """The shared training state of a checkpoint (progress, sampler, schedule), as plain data."""
    return json.loads(Path(directory, STATE_DIR, STATE_FILE).read_text())


# -- plain states --------------------------------------------------------------------------------------
def save_states(
    directory: str | Path,
    states: Mapping[str, Stateful],
    engine: DeepSpeedEngine | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Write the shared states (rank 0, JSON) and this rank's own ones (`rank_<r>.pt`, tensors only).

    Every rank calls it: a state's `state_dict()` may run a collective (the sampler sums its counts).
    """
    rank, world = collectives.rank(), collectives.world_size()
    out = Path(directory, STATE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    shared = {k: obj.state_dict() for k, obj in states.items() if not getattr(obj, "per_rank", False)}
    own = {k: obj.state_dict() for k, obj in states.items() if getattr(obj, "per_rank", False)}
    if own:
        torch.save(own, out / f"rank_{rank}.pt")
    if rank == 0:
        meta = {"format": FORMAT, "world_size": world, "states": shared, "engine": _engine_counters(engine)}
        (out / STATE_FILE).write_text(json.dumps(meta, indent=1))
    return out


def load_states(directory: str | Path, states: Mapping[str, Stateful]) -> dict[str, Any]:
    """Restore `states` from `directory` on this rank; returns the checkpoint's metadata."""
    path = Path(directory, STATE_DIR, STATE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a complete snnet-ray checkpoint")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, more than a training state can be")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a format-{FORMAT} snnet-ray training state")
    shared, saved_world = meta["states"], meta["world_size"]
    rank, world = collectives.rank(), collectives.world_size()
    wanted = [k for k, obj in states.items() if not getattr(obj, "per_rank", False)]
    missing = sorted(set(wanted) - set(shared))
    if missing:
        raise ValueError(f"checkpoint {path} has no state for {missing}; it holds {sorted(shared)}")
    for key in wanted:
        states[key].load_state_dict(shared[key])
    own_path = Path(directory, STATE_DIR, f"rank_{rank}.pt")
    own = torch.load(own_path, map_location="cpu", weights_only=True) if own_path.is_file() else {}
    step = int(shared.get("progress", {}).get("step", 0))
    for key, obj in states.items():
        if not getattr(obj, "per_rank", False):
            continue
        if saved_world == world and key in own:
            obj.load_state_dict(own[key])
        elif hasattr(obj, "reseed"):
            obj.reseed(step, rank)
    return meta


# -- the engine's tensors, per parameter ----------------------------------------------------------------
def _torch_optimizer(engine: DeepSpeedEngine) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO and bf16 hold the client's as `.optimizer`)."""
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer):
        if not hasattr(opt, "optimizer"):
            raise TypeError(f"cannot find the torch optimizer inside {type(engine.optimizer).__name__}")
        opt = opt.optimizer
    return opt


def _moment_keys(engine: DeepSpeedEngine) -> tuple[str, ...]:
    opt = _torch_optimizer(engine)
    for state in opt.state.values():
        return tuple(sorted(k for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0))
    return ("exp_avg", "exp_avg_sq")  # AdamW, before its first step


def _link_moments(engine: DeepSpeedEngine) -> None:
    """Point every parameter's fragment at its optimizer moments, in every parameter group.

    DeepSpeed 0.19 links them once, right after the optimizer steps the *first* group (ZeRO-1/2
    step one group at a time), so the moments of later groups (the SNNet has several: anchors and
    stitching layers, with and without weight decay) stay unlinked and `safe_get_full_optimizer_state`
    fails for them. DeepSpeed's own linking function, called per group once the states exist, fixes that.
    """
    from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

    opt = engine.optimizer
    lp = getattr(opt, "bit16_groups", None) or getattr(opt, "bf16_groups", None)  # ZeRO-1/2, bf16 (no ZeRO)
    hp = getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_groups_flat_partition", None)
    if lp is None or hp is None:
        return  # no ZeRO-1/2 and no bf16 wrapper: the torch optimizer holds the parameters themselves
    state = _torch_optimizer(engine).state
    for lp_params, flat in zip(lp, hp):
        if state.get(flat):
            lazy_init_hp_params_optimizer_state(lp_params, flat, state)


def _full_param(p: torch.nn.Parameter) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(p)
    return (full if full is not None else p.detach()).float()


def _full_moment(engine: DeepSpeedEngine, p: torch.nn.Parameter, key: str) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_optimizer_state

    full = safe_get_full_optimizer_state(p, key)
    if full is None:  # no ZeRO, no bf16: the torch optimizer holds the parameter itself
        full = _torch_optimizer(engine).state[p][key]
    return full.float()


def _engine_tensors(engine: DeepSpeedEngine) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Full fp32 weights, buffers and optimizer moments by name (every rank takes part: ZeRO
    assembles each tensor with a collective), and the SNNet's state dict from the same tensors."""
    from snnet_ray.train.engine import unwrap

    module = unwrap(engine)
    _link_moments(engine)
    keys = _moment_keys(engine)
    opt = _torch_optimizer(engine)
    tensors: dict[str, torch.Tensor] = {}
    params = dict(module.named_parameters())
    state = module.state_dict()
    model_state: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        full = _full_param(params[name]) if name in params else value.detach()
        model_state[name] = full
        tensors[f"model.{name}"] = full
    for name, p in params.items():
        if p.requires_grad:
            for key in keys:
                tensors[f"optim.{key}.{name}"] = _full_moment(engine, p, key)
    steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
    tensors["optim.step"] = torch.tensor(max(steps, default=0.0), dtype=torch.float64)
    return tensors, model_state


def _engine_template(engine: DeepSpeedEngine) -> dict[str, torch.Tensor]:
    """Empty tensors with the names and shapes `_engine_tensors` writes, for DCP to load into."""
    from snnet_ray.train.engine import unwrap

    module = unwrap(engine)
    keys = _moment_keys(engine)
    params = dict(module.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict().items():
        shape = _full_shape(params[name]) if name in params else value.shape
        dtype = torch.float32 if name in params else value.dtype
        out[f"model.{name}"] = torch.empty(shape, dtype=dtype)
    for name, p in params.items():
        if p.requires_grad:
            for key in keys:
                out[f"optim.{key}.{name}"] = torch.empty(_full_shape(p), dtype=torch.float32)
    out["optim.step"] = torch.zeros((), dtype=torch.float64)
    return out


def _full_shape(p: torch.nn.Parameter) -> torch.Size:
    return getattr(p, "ds_shape", None) or p.shape  # ZeRO-3 keeps the full shape in ds_shape


def _set_engine_tensors(engine: DeepSpeedEngine, loaded: Mapping[str, torch.Tensor]) -> None:
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    from snnet_ray.train.engine import unwrap

    module = unwrap(engine)
    _link_moments(engine)
    opt = _torch_optimizer(engine)
    keys = _moment_keys(engine)
    params = dict(module.named_parameters())
    zero3 = engine.zero_optimization_stage() == 3
    for name, buf in module.named_buffers():
        if f"model.{name}" in loaded:
            buf.data.copy_(loaded[f"model.{name}"])
    for name, p in params.items():
        value = loaded[f"model.{name}"].to(p.device)
        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            safe_set_full_fp32_param(p, value)
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0, enabled=zero3):
            p.data.copy_(value.to(p.dtype))  # the low-precision copy the forward pass reads
        if not p.requires_grad:
            continue
        for key in keys:
            moment = loaded[f"optim.{key}.{name}"].to(p.device)
            if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
                safe_set_full_optimizer_state(p, moment, key)
            else:
                opt.state[p][key].copy_(moment)
    step = float(loaded["optim.step"])
    for state in opt.state.values():
        if "step" in state:
            if torch.is_tensor(state["step"]):
                state["step"].fill_(step)
            else:
                state["step"] = int(step)


def _prime_optimizer(engine: DeepSpeedEngine) -> None:
    """Give a fresh engine its optimizer states (AdamW creates them at its first step), so the
    loaded moments have somewhere to go: one step on zero gradients. Every value it changes
    (weights, moments, step counters, schedule) is overwritten by the load that follows."""
    opt = _torch_optimizer(engine)
    if opt.state:
        return
    for _ in range(engine.gradient_accumulation_steps()):
        zero = sum((p * 0).sum() for p in engine.module.parameters() if p.requires_grad)
        engine.backward(zero)
        engine.step()


def _engine_counters(engine: DeepSpeedEngine | None) -> dict[str, Any]:
    if engine is None:
        return {}
    scheduler = engine.lr_scheduler
    return {
        "global_steps": int(engine.global_steps),
        "global_samples": int(engine.global_samples),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }


def _set_engine_counters(engine: DeepSpeedEngine, counters: Mapping[str, Any]) -> None:
    engine.global_steps = int(counters["global_steps"])
    engine.global_samples = int(counters["global_samples"])
    scheduler = engine.lr_scheduler
    if scheduler is not None and counters.get("scheduler") is not None:
        saved = dict(counters["scheduler"])
        saved["lr_lambdas"] = [None] * len(scheduler.optimizer.param_groups)  # functions are not saved
        scheduler.load_state_dict(saved)
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr  # load_state_dict restores the schedule's position, not the groups' lr


# -- reading DCP's index without unpickling arbitrary objects --------------------------------------------
# Exact (module, name) pairs only: no wildcards (a module's namespace holds what it imported, `os`
# included, and pickle resolves dotted names through it) and no `getattr` (a walk to any global).
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = frozenset({
    *((_DCP_METADATA, name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "ChunkStorageMetadata", "TensorProperties",
        "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
    )),
    ("torch.distributed.checkpoint.planner", "WriteItemType"),
    ("torch.distributed.checkpoint.planner", "LoadItemType"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    *(("torch", dtype) for dtype in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    )),
    ("torch", "strided"), ("torch", "contiguous_format"), ("torch", "channels_last"),
    ("torch", "preserve_format"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name to torch.strided etc., nothing else
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # the checkpoint id DCP records
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"),
})  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's own metadata classes, torch dtypes and plain containers, each by its exact name;
    anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint index refers to {module}.{name}, which a DCP index never holds")


def _safe_reader_class():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            path = Path(self.path, ".metadata")
            if path.stat().st_size > MAX_STATE_BYTES:
                raise ValueError(f"{path} is too large for a checkpoint index")
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _safe_reader(path: str):
    return _safe_reader_class()(path)
