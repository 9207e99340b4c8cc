"""Saving and loading a whole SN-Net: its build spec (JSON) and its weights (safetensors).

A saved SN-Net is a directory with `snnet.json` (anchors in size order with their timm kwargs,
window, pairing) and `model.safetensors` (anchors and stitching layers). Loading rebuilds the
anchors from timm without pretrained weights, then loads the file: no hub, no anchor files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from snnet_ray.stitching.snnet import SNNet

__all__ = ["SPEC_FILE", "WEIGHTS_FILE", "load_snnet", "resolve_model_dir", "save_snnet"]

SPEC_FILE = "snnet.json"
WEIGHTS_FILE = "model.safetensors"


def save_snnet(
    model: SNNet,
    directory: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `snnet.json` and `model.safetensors` to `directory` (created if needed).

    `state_dict` overrides the model's own (e.g. weights gathered from ZeRO-3 shards); `extra` is
    stored in the JSON (training step, data config, ...).
    """
    if model.build_spec is None:
        raise ValueError("this SNNet was not built with SNNet.from_timm, so it has no build spec to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    # safetensors refuses shared storage; every tensor is saved as its own contiguous copy.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}, str(directory / WEIGHTS_FILE))
    spec = {"format": "snnet-ray/1", **model.build_spec, "extra": extra or {}}
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1, default=str))
    return directory


def load_snnet(directory: str | Path, device: torch.device | str = "cpu") -> SNNet:
    """Rebuild a saved SN-Net and load its weights (`device='meta'`: structure only, instantly)."""
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a saved SN-Net directory holds {SPEC_FILE} and {WEIGHTS_FILE} "
                "(written by save_snnet and by training checkpoints)"
            )
    spec = json.loads(spec_path.read_text())
    model = SNNet.from_timm(
        [(name, kwargs) for name, kwargs in spec["anchors"]],
        kernel_size=spec["kernel_size"],
        stride=spec["stride"],
        nearest=spec["nearest"],
        # Models saved before rules and final-norm modes existed were built with today's 'dense'
        # rule and always ran the final norm: they load as they were trained.
        rule=spec.get("rule", "dense"),
        final_norm=spec.get("final_norm", "always"),
        rule_options=spec.get("rule_options") or None,
        device=device,
        # SN-Netv2's LoRA fields; older saves predate them and hold plain stitching layers.
        lora_r=int(spec.get("lora_r", 0)),
        lora_alpha=float(spec.get("lora_alpha", 1.0)),
        **spec["timm_kwargs"],
    )
    if str(device) != "meta":  # on meta only the structure (configs, costs) is wanted
        model.load_state_dict(load_file(str(weights_path), device=str(device)))
    return model


def resolve_model_dir(checkpoint: str) -> str:
    """The saved-SN-Net directory inside `checkpoint` (a training checkpoint holds it in `model/`).

    Remote checkpoints (s3://, gs://, ...) are downloaded with Ray Train's `Checkpoint`.
    """
    if "://" in checkpoint:
        from ray.train import Checkpoint

        checkpoint = Checkpoint(checkpoint).to_directory()
    path = Path(checkpoint)
    for candidate in (path, path / "model"):
        if (candidate / SPEC_FILE).is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"no saved SN-Net in {checkpoint}: expected snnet.json and model.safetensors there or in its model/ "
        "folder (training checkpoints and save_snnet write them)"
    )
