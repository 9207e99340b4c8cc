"""Regional compilation: every block compiled once; switching configs never recompiles.

Dynamo's counters tell: after one pass over every config (forward and backward, train mode), a
second pass compiles no new graph and recompiles nothing, and the compiled blocks compute what the
eager ones do. The backend is "eager" (dynamo traces and guards exactly as for inductor, but skips
code generation, which takes minutes on two CPU cores): recompilation is decided by the guards,
not by the backend. Swin is the family whose blocks differ by a per-instance attribute (the shift
size), and both families carry per-block stochastic-depth rates.
"""

from __future__ import annotations

import pytest
import torch
from tiny_families import tiny_snnet


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def _every_config(model, x):
    for cfg in model.configs:
        model.select(cfg.id)
        model(x).square().mean().backward()


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_switching_configs_after_the_first_pass_never_recompiles(family, one_thread):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = tiny_snnet(family, drop_path_rate=0.1)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    eager = {c: model.forward_config(x, c).detach() for c in (0, len(model.configs) - 1)}
    blocks = model.compile_blocks(backend="eager")
    model.train()

    _every_config(model, x)
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs < blocks  # blocks of one shape share a graph: not one graph per block
    recompiles = sum(counters["recompiles"].values())
    _every_config(model, x)
    assert counters["stats"]["unique_graphs"] == graphs
    assert sum(counters["recompiles"].values()) == recompiles
    assert not counters["graph_break"]

    model.eval()
    with torch.no_grad():
        for c, expected in eager.items():
            torch.testing.assert_close(model.forward_config(x, c), expected)
    torch._dynamo.reset()


def test_compile_option_is_in_the_model_config():
    from snnet_ray.train.config import load_experiment

    cfg = load_experiment("tiny_digits", ["data.root=/tmp/unused", "model.compile=true"])
    assert cfg.model.compile is True
    assert load_experiment("tiny_digits", ["data.root=/tmp/unused"]).model.compile is False
