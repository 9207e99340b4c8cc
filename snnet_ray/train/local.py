"""A launcher without Ray: the same worker code under `torch.distributed` with an env:// rendezvous.

    snnet-ray train --config tiny_digits --local --nproc 2            # spawns 2 workers here
    torchrun --nproc-per-node 8 -m snnet_ray.train.local --config deit_ti_s_b_imagenet --set ...

Each worker is the `Trainer` of the Ray path with a `LocalContext`: rank, world size and local rank
come from `RANK`/`WORLD_SIZE`/`LOCAL_RANK` (what torchrun sets), the process group from
`MASTER_ADDR`/`MASTER_PORT`, checkpoints go to `<run.storage_path>/<run>/step_*/` in the layout the Ray
path writes (either launcher resumes the other's run, on any number of workers), metrics to
`<run.storage_path>/<run>/metrics.jsonl`, and evaluations to the configured results database or
service (`results.url`, else $SNNET_RESULTS_URL, else `results.db`). Nothing on this path imports Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snnet_ray.train.config import ExperimentConfig, load_experiment

__all__ = ["LocalOutcome", "main", "results_target", "run_dir", "run_local", "run_worker", "with_workers"]

log = logging.getLogger(__name__)


@dataclass
class LocalOutcome:
    """Where a local run's things are."""

    run: str
    checkpoint: str | None
    results_url: str
    table: Any


def run_dir(cfg: ExperimentConfig, run: str | None = None) -> Path:
    """`<run.storage_path>/<run>`: the run's checkpoints and metrics (a local or shared file system)."""
    storage = cfg.run.storage_path
    if "://" in storage:
        raise ValueError(
            f"run.storage_path={storage}: the local launcher writes checkpoints to a file system path "
            "(a local or shared directory); use the Ray launcher for object stores"
        )
    return Path(storage).expanduser().resolve() / (run or cfg.run.name)


def results_target(cfg: ExperimentConfig) -> str:
    """The results URL of a local run: results.url, else $SNNET_RESULTS_URL, else the database results.db."""
    from snnet_ray.results.client import ENV_URL
    from snnet_ray.results.store import normalize_db_url

    return cfg.results.url or os.environ.get(ENV_URL) or normalize_db_url(cfg.results.db)


def run_local(
    cfg: ExperimentConfig, nproc: int, *, run: str | None = None, timeout_s: float | None = None
) -> LocalOutcome:
    """Validate, register the run, start `nproc` workers on this machine and wait for them.

    The run is marked `failed` in the results when a worker fails, and `finished` when all succeed."""
    from snnet_ray.train.context import check_device

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    check_device(cfg.scaling.use_gpu)
    if cfg.scaling.use_gpu:
        import torch

        if torch.cuda.device_count() < nproc:
            raise ValueError(
                f"--nproc {nproc} with scaling.use_gpu=true needs {nproc} GPUs; this machine has "
                f"{torch.cuda.device_count()}"
            )
    run = run or cfg.run.name
    cfg = with_workers(cfg, nproc)  # the batch sizes must divide on this many workers
    url = results_target(cfg)
    results, experiment = _register(cfg, run, url)
    directory = run_dir(cfg, run)
    directory.mkdir(parents=True, exist_ok=True)
    payload = directory / "launch.json"
    payload.write_text(json.dumps({"experiment": experiment, "run": run, "results_url": url}))
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = dict(
            os.environ,
            RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, "-m", "snnet_ray.train.local", "--payload", str(payload)], env=env)
        )
    from snnet_ray.train.status import recorded_status

    with recorded_status(results, run):  # failed, or stopped (SIGTERM, Ctrl-C: the workers are stopped too)
        try:
            codes = _wait_all(procs, timeout_s)
        except BaseException:
            _stop_all(procs)
            raise
        if any(codes):
            raise RuntimeError(f"local training run {run} failed: worker exit codes {codes}")
    checkpoint = _mark_finished(results, run, experiment, directory)
    table = results.table(run, "final") if cfg.eval.final else None
    return LocalOutcome(run=run, checkpoint=str(checkpoint) if checkpoint else None, results_url=url, table=table)


def with_workers(cfg: ExperimentConfig, world_size: int) -> ExperimentConfig:
    """`cfg` for `world_size` workers: the global batch, and the peak lr scaled to it, follow the
    workers this launcher starts, not `scaling.num_workers` (sized for the Ray cluster)."""
    import dataclasses

    if cfg.scaling.num_workers == world_size:
        return cfg
    return dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=world_size))


def run_worker(cfg: ExperimentConfig, run: str, results_url: str | None) -> None:
    """One worker of a local run (its rank from the environment); also what torchrun starts."""
    from snnet_ray.train.context import LocalContext
    from snnet_ray.train.trainer import Trainer

    context = LocalContext(cfg.scaling.use_gpu, run_dir(cfg, run), keep_checkpoints=cfg.run.keep_checkpoints)
    try:
        Trainer(cfg, results_url=results_url, run=run, context=context).train()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """`python -m snnet_ray.train.local` (torchrun's entry): --payload from `run_local`, or a config."""
    p = argparse.ArgumentParser(prog="python -m snnet_ray.train.local", description=__doc__.split("\n")[0])
    p.add_argument("--payload", help="launch.json written by `snnet-ray train --local`")
    p.add_argument("--config", help="preset name or YAML file (under torchrun)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.payload:
        payload = json.loads(Path(args.payload).read_text())
        cfg = load_experiment(payload["experiment"])
        run_worker(cfg, payload["run"], payload["results_url"])
        return 0
    if not args.config:
        p.error("give --config (or --payload)")
    cfg = with_workers(load_experiment(args.config, args.overrides), int(os.environ.get("WORLD_SIZE", "1")))
    url = results_target(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        run_worker(cfg, cfg.run.name, url)
        return 0
    # Under torchrun no driver registers the run or records how it ended: rank 0 does both.
    from snnet_ray.train.status import recorded_status

    results, experiment = _register(cfg, cfg.run.name, url)
    with recorded_status(results, cfg.run.name):  # failed, or stopped (torchrun forwards SIGTERM)
        run_worker(cfg, cfg.run.name, url)
    _mark_finished(results, cfg.run.name, experiment, run_dir(cfg))
    return 0


def _register(cfg: ExperimentConfig, run: str, url: str) -> tuple[Any, dict[str, Any]]:
    """Validate the run, register it `running` with its configs; (results, experiment dict)."""
    from snnet_ray.eval.distributed import register_configs
    from snnet_ray.results import connect
    from snnet_ray.train.launch import validate_experiment

    model = validate_experiment(cfg, check_cluster=False)
    results = connect(url, token=cfg.results.token)
    experiment = cfg.to_dict()
    results.register_run(run, experiment=experiment, status="running")
    register_configs(results, run, model)
    return results, experiment


def _mark_finished(results: Any, run: str, experiment: dict[str, Any], directory: Path) -> Path | None:
    """Mark `run` finished, recording its last checkpoint's SNNet as `model_dir` (what export finds)."""
    from snnet_ray.train.context import latest_checkpoint

    checkpoint = latest_checkpoint(directory)
    if checkpoint is not None:
        experiment["model_dir"] = str(checkpoint / "model")
    results.register_run(run, experiment=experiment, status="finished")
    return checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_all(procs: list[subprocess.Popen], timeout_s: float | None) -> list[int]:
    """Exit codes of every worker; when one fails the others are stopped (they would wait forever
    in a collective for the missing rank)."""
    import time

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [int(c) for c in codes]  # type: ignore[arg-type]
        if any(c not in (None, 0) for c in codes) or (deadline is not None and time.monotonic() > deadline):
            _stop_all(procs)
            return [p.returncode if p.returncode is not None else -9 for p in procs]
        time.sleep(0.2)


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
