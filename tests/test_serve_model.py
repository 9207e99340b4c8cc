"""What a replica loads: the GPU check before a GPU replica loads, and SN-Netv2 LoRA layers folded."""

from __future__ import annotations

import pytest
import torch

from snnet_ray import SNNet
from snnet_ray.stitching.layers import LoRAStitch

# A tiny DeiT III pair (4 vs 8 blocks, as tests/test_snnetv2.py builds it): seconds on a CPU.
TINY_V2 = (
    [
        ("deit3_small_patch16_224", dict(embed_dim=16, depth=4, num_heads=2)),
        ("deit3_large_patch16_224", dict(embed_dim=32, depth=8, num_heads=2)),
    ],
    dict(img_size=32, patch_size=8, num_classes=10),
)


def test_a_replica_asked_for_cuda_fails_on_a_broken_setup_before_loading(tmp_path):
    from snnet_ray.cuda_check import CudaSetupError
    from snnet_ray.serve.app import _load_replica
    from snnet_ray.serve.options import ServeOptions

    if torch.cuda.is_available():
        pytest.skip("this machine has a working CUDA setup")
    # No model at this path: an error about the model would mean it was read before the GPU check.
    options = ServeOptions(model=str(tmp_path / "not-there"), device="cuda")
    with pytest.raises(CudaSetupError, match="Fix:") as err:
        _load_replica(options)
    assert "not-there" not in str(err.value)


def test_served_snnetv2_folds_lora_layers_and_ranks_by_folded_costs(tmp_path):
    from torch import nn

    from snnet_ray.serve.model import load_served_model
    from snnet_ray.stitching.saving import save_snnet

    torch.manual_seed(0)
    anchors, kwargs = TINY_V2
    model = SNNet.from_timm(anchors, rule="snnetv2", lora_r=4, **kwargs).eval()
    for layer in model.stitch_layers:
        nn.init.normal_(layer.lora_b, std=0.5)  # a trained low-rank update, so folding changes the weights
    top1 = {c.id: 50.0 + 40.0 * i / len(model.configs) for i, c in
            enumerate(sorted(model.configs, key=lambda c: model.cost(c.id).gmacs))}
    save_snnet(model, tmp_path / "v2", extra={"top1": {str(c): v for c, v in top1.items()}})

    served = load_served_model(str(tmp_path / "v2"))
    assert torch.is_grad_enabled()  # loading a model changes nothing process-wide
    assert not any(isinstance(layer, LoRAStitch) for layer in served.snnet.stitch_layers)
    assert not any("lora" in name for name, _ in served.snnet.named_parameters())
    assert not served.snnet.training
    x = torch.randn(2, 3, 32, 32)
    stitched = [c for c in model.configs if not c.is_anchor]
    with torch.no_grad():
        for cfg in stitched[:: max(1, len(stitched) // 3)]:
            torch.testing.assert_close(served.snnet.forward_config(x, cfg.id), model.forward_config(x, cfg.id),
                                       atol=1e-5, rtol=1e-4)
    # The frontier and the GMACs reported per config are the folded (served) costs, not the trained ones.
    cfg = stitched[0]
    assert served.gmacs[cfg.id] == pytest.approx(model.cost(cfg.id, folded=True).gmacs, rel=1e-9)
    assert served.gmacs[cfg.id] < model.cost(cfg.id).gmacs
    assert all(f.gmacs == pytest.approx(model.cost(f.id, folded=True).gmacs, rel=1e-9) for f in served.frontier)
