"""Anchor weights fetched per node: a two-node `ray.cluster_utils.Cluster`, two workers per node.

What a user relies on when the anchors live in an object store and the head node runs no training:
the driver hands the workers the URL (not a path on its own disk), each node downloads each file
once however many workers it runs (a lock per node, its own temporary name per process, an atomic
rename, a size check), and every worker reads the same bytes. The "object store" is an HTTP server
on 127.0.0.1 that counts its downloads; each node has its own cache directory, as separate machines
would.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections import Counter
from pathlib import Path
from typing import ClassVar

import pytest

from snnet_ray.data.node_cache import fetch_to_node

pytestmark = pytest.mark.slow

PAYLOAD = bytes(range(256)) * 1200  # 300 kB, one read


class _Counting(http.server.SimpleHTTPRequestHandler):
    gets: ClassVar[Counter] = Counter()

    def do_GET(self):
        _Counting.gets[self.path] += 1
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    (root / "anchor_small.safetensors").write_bytes(PAYLOAD)
    handler = lambda *a, **k: _Counting(*a, directory=str(root), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    caches = [tmp_path_factory.mktemp(f"node{i}_cache") for i in range(2)]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for i, cache in enumerate(caches):
        cluster.add_node(num_cpus=2, resources={f"node{i}": 2}, env_vars={"SNNET_CACHE_DIR": str(cache)})
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield caches
    ray.shutdown()
    cluster.shutdown()


def test_each_node_downloads_each_file_once(server, two_nodes, tmp_path, monkeypatch):
    import ray

    from snnet_ray.train.config import load_experiment
    from snnet_ray.train.launch import build_trainer

    url = f"{server}/anchor_small.safetensors"
    # the driver's own copy lives in a cache no worker can see
    monkeypatch.setenv("SNNET_CACHE_DIR", str(tmp_path / "driver_cache"))
    cfg = load_experiment("tiny_digits", [f"model.pretrained=[{url}, false, false]", f"run.storage_path={tmp_path}"])
    trainer = build_trainer(cfg, run="weights", results_url=None)
    assert trainer.train_loop_config["experiment"]["model"]["pretrained"][0] == url  # the URL, not a driver path
    assert not (tmp_path / "driver_cache").exists()

    @ray.remote(num_cpus=1)
    class Worker:
        def fetch(self, url: str) -> tuple[str, str]:
            from snnet_ray.train.launch import local_weights

            path = local_weights([url, False, False])[0]
            return path, hashlib.sha256(Path(path).read_bytes()).hexdigest()

    workers = [Worker.options(resources={f"node{i}": 1}).remote() for i in (0, 0, 1, 1)]
    got = ray.get([w.fetch.remote(url) for w in workers])
    assert _Counting.gets["/anchor_small.safetensors"] == 2  # once per node, not once per worker
    node0, node1 = two_nodes
    assert {Path(p).parent.parent for p, _ in got[:2]} == {node0 / "weights"}
    assert {Path(p).parent.parent for p, _ in got[2:]} == {node1 / "weights"}
    assert {digest for _, digest in got} == {hashlib.sha256(PAYLOAD).hexdigest()}
    for cache in two_nodes:
        assert not list(cache.rglob("*.part")), "a temporary download was left behind"

    # fetching again on a node reuses its copy
    assert ray.get(workers[0].fetch.remote(url))[0] == got[0][0]
    assert _Counting.gets["/anchor_small.safetensors"] == 2


def test_truncated_copy_is_fetched_again_and_local_paths_pass_through(server, tmp_path):
    url = f"{server}/anchor_small.safetensors"
    path = fetch_to_node(url, tmp_path)
    path.write_bytes(PAYLOAD[:1000])  # a copy cut short by an earlier crash
    before = _Counting.gets["/anchor_small.safetensors"]
    assert fetch_to_node(url, tmp_path).read_bytes() == PAYLOAD
    assert _Counting.gets["/anchor_small.safetensors"] == before + 1
    local = tmp_path / "shared.safetensors"
    assert fetch_to_node(str(local)) == local and fetch_to_node(f"file://{local}") == local
