"""Multi-node behaviour on one machine: a head and two worker nodes (`ray.cluster_utils.Cluster`).

What a user running SN-Net training on a cluster relies on when a node goes away:
- The 2 Ray Train workers run on different nodes (`scaling.placement_strategy=STRICT_SPREAD`;
  each worker node has 1 CPU, the head none, like a GPU cluster's head without GPUs), and
  DeepSpeed's gloo collectives between the nodes train as on one node. (Ray Train numbers local
  ranks per node IP, and these nodes share one, so both workers see local_rank 0/1 of 2. DeepSpeed's
  CPU shared-memory all-reduce stays out of it either way: it is set up only when $LOCAL_SIZE equals
  the world size, Ray does not set LOCAL_SIZE, and training collectives go through torch.distributed.)
- A worker node removed mid-run, after the step-8 evaluation but before its checkpoint, fails
  the worker group; a replacement node (what the autoscaler adds) lets Ray Train place the
  group again (`failure.max_failures=1`); the run resumes from the last checkpoint Ray had
  registered (step 4), redoes steps 5-8 only, and finishes.
- The results service (the Serve app over SQLite) keeps every evaluation exactly once: each
  (checkpoint, config, shard) is one record; the step-8 evaluation made before the loss, from
  weights no checkpoint kept, is replaced by the resumed run's; the final evaluation covers every
  config on all 360 validation images. The service's replica is pinned to the head (whose disk
  holds the database), so losing a worker node never takes the service down.

The workers run the real `Trainer` with two observation points (`ObservedTrainer`): each
attempt writes where it runs, and the first attempt pauses before step 8's checkpoint until its
node is gone, so the loss always falls between two checkpoints.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snnet_ray.train.trainer import Trainer

pytestmark = pytest.mark.slow

RUN = "multinode"
STEPS = 12
EVERY = 4  # checkpoints and periodic evaluations
PAUSE_AT = 8  # the first attempt stops here, before the checkpoint; the node goes away
VAL_IMAGES = 360
WAIT_S = 240.0  # upper bound for each wait below; a healthy run needs a fraction


# -- the workers' side --------------------------------------------------------------------------------
class ObservedTrainer(Trainer):
    """The SN-Net trainer, recording each attempt's placement and pausing the first one at PAUSE_AT."""

    def __init__(self, cfg: Any, results_url: str | None, run: str, observe: Path) -> None:
        import ray
        import ray.train

        super().__init__(cfg, results_url=results_url, run=run)
        self.observe = observe
        ctx = ray.train.get_context()
        self._record(
            event="start",
            node_id=ray.get_runtime_context().get_node_id(),
            world_size=ctx.get_world_size(),
            resumed=self.resumed,
            step=self.progress.step,
            samples=self.progress.samples,
        )

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        if self.progress.step == PAUSE_AT and not self.resumed:
            self._record(event="paused", step=self.progress.step)
            # Until the test removes this rank's node (or the other one's): the controller then
            # tears the whole worker group down. The limit only bounds a broken test.
            time.sleep(WAIT_S)
        super().checkpoint(metrics)
        self._record(event="checkpoint", step=self.progress.step, samples=self.progress.samples)

    def _record(self, **fields: Any) -> None:
        with (self.observe / f"rank{self.rank}.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.time(), **fields}) + "\n")


def observed_train_loop(loop_config: dict[str, Any]) -> None:
    """`snnet_ray.train.trainer.train_loop_per_worker` with the `ObservedTrainer`."""
    from snnet_ray.train.config import load_experiment

    cfg = load_experiment(loop_config["experiment"])
    trainer = ObservedTrainer(
        cfg, results_url=loop_config["results_url"], run=loop_config["run"], observe=Path(loop_config["observe"])
    )
    trainer.train()


# -- the cluster and the run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # A temp dir of its own (short: socket paths must fit 107 bytes): `Cluster` records its address in
    # $RAY_TMPDIR/ray/ray_current_cluster, where another Ray on this machine would otherwise find it.
    temp = tempfile.mkdtemp(prefix="raymn", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", temp)
        # The head runs the driver, Ray Train's controller and Serve's controller and proxy; no training.
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        try:
            for _ in range(2):
                c.add_node(num_cpus=1)
            c.wait_for_nodes()
            env = {
                "PYTHONPATH": str(Path(__file__).parent),
                "OMP_NUM_THREADS": "1",
                # Ray Train's actors find the state API through RAY_ADDRESS, else through an address file.
                "RAY_ADDRESS": c.address,
            }
            ray.init(address=c.address, runtime_env={"env_vars": env})
            yield c
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def experiment(data_root: Path, storage: Path):
    from snnet_ray.train.config import load_experiment

    return load_experiment(
        "tiny_digits",
        [
            f"data.root={data_root}",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=1",
            "scaling.placement_strategy=STRICT_SPREAD",
            f"schedule.max_steps={STEPS}",
            f"run.name={RUN}",
            f"run.storage_path={storage}",
            f"run.checkpoint_every_steps={EVERY}",
            "run.keep_checkpoints=3",
            f"run.log_every_steps={EVERY}",
            f"eval.every_steps={EVERY}",
            "eval.configs=anchors",
            "eval.max_shards=1",
            "failure.max_failures=1",
        ],
    )


@pytest.fixture(scope="module")
def node_loss_run(cluster, tmp_path_factory):
    """Train 12 steps on 2 worker nodes; remove a worker's node at step 8, add a replacement."""
    import ray
    from ray import serve
    from ray.train.torch import TorchTrainer

    from snnet_ray.data import write_digits_shards
    from snnet_ray.eval.distributed import register_configs
    from snnet_ray.results import connect, ensure_results_service
    from snnet_ray.train.launch import build_trainer, validate_experiment

    tmp = tmp_path_factory.mktemp("multinode")
    write_digits_shards(str(tmp / "digits"))
    cfg = experiment(tmp / "digits", tmp / "ray")
    observe = tmp / "observe"
    observe.mkdir()

    # Every node of this one machine shares 127.0.0.1: one HTTP proxy (the head's), not one per node.
    port = _free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    url = ensure_results_service(f"sqlite:///{tmp / 'results.db'}", port=port)
    results = connect(url)
    # What `run_experiment` does before training: validate, register the run and its configs.
    model = validate_experiment(cfg)
    results.register_run(RUN, experiment=cfg.to_dict(), status="running")
    register_configs(results, RUN, model)

    base = build_trainer(cfg, run=RUN, results_url=url)
    trainer = TorchTrainer(
        observed_train_loop,
        train_loop_config={**base.train_loop_config, "observe": str(observe)},
        torch_config=base.backend_config,
        scaling_config=base.scaling_config,
        run_config=base.run_config,
    )
    # Ray starts and removes nodes from the main thread only (signal handlers): training runs beside it.
    outcome: dict[str, Any] = {}
    fitter = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
    start = time.perf_counter()
    fitter.start()
    node_loss = _remove_node_when_paused(cluster, observe, Path(base.run_config.storage_path, RUN), fitter)
    fitter.join(timeout=WAIT_S)
    assert not fitter.is_alive(), f"training did not finish within {WAIT_S:.0f} s after the node loss"
    if "error" in outcome:
        raise outcome["error"]
    print(f"multi-node run: {time.perf_counter() - start:.1f} s, node loss {node_loss}")
    yield {
        "result": outcome["result"],
        "observe": observe,
        "node_loss": node_loss,
        "results": results,
        "model": model,
        "val_shards": _val_shards(cfg),
        "head_node_id": cluster.head_node.node_id,
        "live_node_ids": {n["NodeID"] for n in ray.nodes() if n["Alive"]},
    }
    results.close()
    serve.shutdown()


def _fit(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = trainer.fit()
    except BaseException as err:  # raised again in the fixture
        outcome["error"] = err


def _remove_node_when_paused(cluster: Any, observe: Path, run_dir: Path, fitter: threading.Thread) -> dict[str, Any]:
    """Once both ranks wait at PAUSE_AT and Ray registered step 4's checkpoint: remove a worker's
    node, then add a replacement as an autoscaler would.

    The results service's replica runs on the head (pinned there), never on the node removed.
    """
    _wait_for(lambda: all(_paused(observe, r) for r in (0, 1)), f"both ranks paused at step {PAUSE_AT}", fitter)
    # Ray's controller registers a reported checkpoint at its next poll of the workers; its
    # snapshot on storage names the checkpoints a retry would resume from.
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    registered = f"step_{EVERY:08d}"
    _wait_for(lambda: snapshot.is_file() and registered in snapshot.read_text(), f"{registered} registered", fitter)
    service_nodes = _results_replica_nodes(cluster.address)
    assert service_nodes == {cluster.head_node.node_id}, "the results service must run on the head node"
    victim_id = _starts(observe, 1)[0]["node_id"]
    (victim,) = [n for n in cluster.worker_nodes if n.node_id == victim_id]
    removed_at = time.time()
    cluster.remove_node(victim)
    added = cluster.add_node(num_cpus=1)
    return {"removed": victim_id, "removed_at": removed_at, "added": added.node_id, "service_nodes": service_nodes}


def _results_replica_nodes(address: str) -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10_000)
    return {a.node_id for a in actors if a.class_name.startswith("ServeReplica:snnet-results:")}


# -- tests ----------------------------------------------------------------------------------------------
def test_workers_run_on_two_different_worker_nodes(node_loss_run):
    observe, node_loss = node_loss_run["observe"], node_loss_run["node_loss"]
    first = [_starts(observe, r)[0] for r in (0, 1)]
    second = [_starts(observe, r)[1] for r in (0, 1)]
    for attempt in (first, second):
        nodes = {s["node_id"] for s in attempt}
        assert len(nodes) == 2, attempt
        assert node_loss_run["head_node_id"] not in nodes
        assert [s["world_size"] for s in attempt] == [2, 2]
    assert node_loss["removed"] in {s["node_id"] for s in first}
    # The retried group runs on the surviving node and the replacement, never on the removed one.
    survivor = ({s["node_id"] for s in first} - {node_loss["removed"]}).pop()
    assert {s["node_id"] for s in second} == {survivor, node_loss["added"]}
    assert node_loss["removed"] not in node_loss_run["live_node_ids"]


def test_run_resumes_from_the_last_checkpoint_after_the_node_loss_and_finishes(node_loss_run):
    result, observe = node_loss_run["result"], node_loss_run["observe"]
    assert result.error is None
    global_batch = 2 * 32
    for rank in (0, 1):
        starts = _starts(observe, rank)
        assert len(starts) == 2  # the first attempt and exactly one retry
        assert (starts[0]["resumed"], starts[0]["step"]) == (False, 0)
        # Not started over: resumed at step 4, the last registered checkpoint before the loss.
        assert (starts[1]["resumed"], starts[1]["step"], starts[1]["samples"]) == (True, EVERY, EVERY * global_batch)
        # Checkpoints in step order across the two attempts: 4, (loss at 8), 8, 12.
        assert _checkpoint_steps(observe, rank) == [4, 8, 12]

    # Ray's checkpoints, in the order it registered them: monotonic steps, samples never counted twice.
    steps = [m["step"] for _, m in result.best_checkpoints]
    assert steps == [4, 8, 12]
    for _, metrics in result.best_checkpoints:
        assert metrics["samples"] == metrics["step"] * global_batch
        assert sum(metrics["config_counts"]) == metrics["step"] * 2  # one config per rank and micro-step
    assert result.metrics["step"] == STEPS  # Ray Train V2: the metrics of the last checkpoint
    with result.checkpoint.as_directory() as d:
        assert Path(d).name == f"step_{STEPS:08d}"
        assert (Path(d) / "model").is_dir()


def test_results_service_has_every_evaluation_once(node_loss_run):
    results, model, shards = node_loss_run["results"], node_loss_run["model"], node_loss_run["val_shards"]
    anchors = sorted(c.id for c in model.configs if c.is_anchor)
    every = sorted(c.id for c in model.configs)

    records = results.records(RUN)
    keys = Counter((r.checkpoint, r.config_id, r.shard) for r in records)
    assert max(keys.values()) == 1
    assert results.checkpoints(RUN) == ["step-000004", "step-000008", "final"]

    by_name: dict[str, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        by_name[r.checkpoint][r.config_id][r.shard] = r.samples
    first_shard = {shards[0][0]: shards[0][1]}
    for name in ("step-000004", "step-000008"):
        assert sorted(by_name[name]) == anchors
        assert all(per_shard == first_shard for per_shard in by_name[name].values()), by_name[name]
    assert sorted(by_name["final"]) == every
    for config_id, per_shard in by_name["final"].items():
        assert per_shard == dict(shards), config_id
        assert sum(per_shard.values()) == VAL_IMAGES

    # Step 4 is from the first attempt; step 8 was evaluated before the loss too, but the resumed run
    # evaluated its own step 8 (the weights of the registered step_00000008) and replaced those records.
    removed_at = node_loss_run["node_loss"]["removed_at"]
    times = defaultdict(list)
    for r in records:
        times[r.checkpoint].append(r.time)
    assert max(times["step-000004"]) < removed_at < min(times["step-000008"]) <= min(times["final"])
    table = results.table(RUN, "final")
    assert len(table.rows) == len(every)
    assert all(row.samples == VAL_IMAGES for row in table.rows)


# -- helpers --------------------------------------------------------------------------------------------
def _events(observe: Path, rank: int) -> list[dict[str, Any]]:
    path = observe / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _paused(observe: Path, rank: int) -> bool:
    return any(e["event"] == "paused" for e in _events(observe, rank))


def _starts(observe: Path, rank: int) -> list[dict[str, Any]]:
    return [e for e in _events(observe, rank) if e["event"] == "start"]


def _checkpoint_steps(observe: Path, rank: int) -> list[int]:
    return [e["step"] for e in _events(observe, rank) if e["event"] == "checkpoint"]


def _wait_for(condition: Callable[[], bool], what: str, fitter: threading.Thread) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if not fitter.is_alive():
            raise RuntimeError(f"training ended before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_S:.0f} s for {what}")
        time.sleep(0.2)


def _val_shards(cfg: Any) -> list[tuple[str, int]]:
    from snnet_ray.data import read_info

    split = read_info(cfg.data.root).split(cfg.data.val_split)
    return list(zip(split.filenames, split.shard_lengths))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
