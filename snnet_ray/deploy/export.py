"""Export one SN-Net config as a standalone model: safetensors weights, `torch.export` program, ONNX.

    summary = export_config("runs/deit/checkpoint_000010", cfg_id=40, out_dir="deploy/cfg40")
    net = load_exported("deploy/cfg40")          # a StitchedNetwork, without the other anchors

An export directory holds:
- `config.json`: the config (id, name, path), its GMACs and parameters, input size and the data
  config (mean, std, interpolation, crop), and how to rebuild the network (the anchors it runs with
  their timm kwargs, the stitching layer, stage and position);
- `model.safetensors`: the state dict of the `StitchedNetwork` (only the blocks the path runs);
- `model.pt2`: a `torch.export` program with a dynamic batch dimension (`torch.export.load`);
- `model.onnx` (+ `model.onnx.data`, its weights): the same through `torch.onnx.export(dynamo=True)`,
  when onnx and onnxscript are installed (they are not dependencies of snnet-ray).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from snnet_ray.anchors.factory import AnchorSpec, create_anchors
from snnet_ray.deploy.network import RouteNetwork, StitchedNetwork, extract_config, prune_anchor, route_pieces
from snnet_ray.stitching.cost import path_pieces
from snnet_ray.stitching.layers import make_stitching_layer
from snnet_ray.stitching.snnet import SNNet

__all__ = [
    "CONFIG_FILE",
    "FORMATS",
    "ExportSummary",
    "StitchedNetwork",
    "default_formats",
    "export_config",
    "extract_config",
    "load_exported",
    "onnx_available",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FORMAT_VERSION = "snnet-ray/export-1"
FILES = {"safetensors": "model.safetensors", "torch_export": "model.pt2", "onnx": "model.onnx"}
FORMATS = tuple(FILES)
ONNX_MISSING = "onnx and onnxscript are not installed (pip install onnx onnxscript to export ONNX)"


@dataclass
class ExportSummary:
    """What `export_config` wrote: the files by format, and the formats it skipped and why."""

    out_dir: Path
    config_id: int
    name: str
    path: str
    gmacs: float
    params: int
    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes of each written file, by format ('config' for config.json)."""
        return {fmt: p.stat().st_size for fmt, p in self.files.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "config_id": self.config_id,
            "name": self.name,
            "path": self.path,
            "gmacs": self.gmacs,
            "params": self.params,
            "files": {fmt: {"path": str(p), "bytes": p.stat().st_size} for fmt, p in self.files.items()},
            "skipped": dict(self.skipped),
        }


def onnx_available() -> bool:
    """True when `torch.onnx.export(dynamo=True)` can run (onnx and onnxscript importable)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def default_formats() -> tuple[str, ...]:
    """safetensors and torch_export, plus onnx where onnx and onnxscript are installed."""
    return FORMATS if onnx_available() else ("safetensors", "torch_export")


def export_config(
    model_or_dir: SNNet | str | Path,
    cfg_id: int,
    out_dir: str | Path,
    *,
    formats: Sequence[str] | None = None,
    example_batch: int = 2,
    dynamic_batch: bool = True,
) -> ExportSummary:
    """Write config `cfg_id` of an SN-Net (a model, a saved SN-Net or a training checkpoint) to `out_dir`.

    `formats` defaults to `default_formats()`; asking for 'onnx' without onnx installed is an error.
    The `torch.export` and ONNX programs are traced at `example_batch` images; with `dynamic_batch`
    they accept any batch size (the trace batch must then be >= 2: torch.export specializes 0 and 1).
    """
    skipped = {} if formats is not None or onnx_available() else {"onnx": ONNX_MISSING}
    formats = _check_formats(formats, example_batch, dynamic_batch)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: give a directory to write the exported model into")
    model = _load_model(model_or_dir, cfg_id)
    if model.build_spec is None:
        raise ValueError("this SNNet was not built with SNNet.from_timm, so its export could not be rebuilt")
    net = extract_config(model, cfg_id).eval()
    del model  # a model loaded from a directory is freed before tracing
    spec = net.spec
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(
        out_dir=out, config_id=spec["config_id"], name=spec["config_name"], path=spec["path"],
        gmacs=spec["gmacs"], params=spec["params"], skipped=skipped,
    )
    device = next(net.parameters()).device
    example = torch.randn(example_batch, *spec["input_size"], device=device)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    if "safetensors" in formats:
        # safetensors refuses shared storage: every tensor is saved as its own contiguous copy.
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
        summary.files["safetensors"] = out / FILES["safetensors"]
        save_file(state, str(summary.files["safetensors"]), metadata={"format": FORMAT_VERSION})
    if "torch_export" in formats:
        with torch.no_grad():
            program = torch.export.export(net, (example,), dynamic_shapes=dynamic)
        summary.files["torch_export"] = out / FILES["torch_export"]
        torch.export.save(program, summary.files["torch_export"])
    if "onnx" in formats:
        summary.files["onnx"] = out / FILES["onnx"]
        weights = out / (FILES["onnx"] + ".data")
        weights.unlink(missing_ok=True)  # a stale one from an earlier export would be mistaken for ours
        # The ONNX exporter reports progress on stdout, which belongs to --json output.
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(
                net, (example,), str(summary.files["onnx"]), dynamo=True, dynamic_shapes=dynamic,
                input_names=["x"], output_names=["logits"],
            )
        if weights.is_file():  # the exporter keeps large weights beside the graph
            summary.files["onnx_data"] = weights
    config = {"format": FORMAT_VERSION, **spec, "files": {f: p.name for f, p in summary.files.items()}}
    summary.files["config"] = out / CONFIG_FILE
    summary.files["config"].write_text(json.dumps(config, indent=1, default=str))
    log.info("exported config %d (%s) to %s: %s", summary.config_id, summary.path, out, ", ".join(summary.files))
    return summary


def load_exported(out_dir: str | Path, device: torch.device | str = "cpu") -> StitchedNetwork | RouteNetwork:
    """Rebuild an exported config from config.json and model.safetensors (in eval mode).

    Only the anchors the path runs are built (from timm, without pretrained weights), pruned to the
    path, and loaded strictly from the file; no other anchor's weights are needed or read.
    """
    out = Path(out_dir)
    config_path, weights_path = out / CONFIG_FILE, out / FILES["safetensors"]
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: an export directory holds {CONFIG_FILE} and {FILES['safetensors']} "
                "(written by export_config / snnet-ray export with the safetensors format)"
            )
    spec = json.loads(config_path.read_text())
    spec.pop("files", None)
    if spec.pop("format", None) != FORMAT_VERSION or "anchors" not in spec:
        raise ValueError(f"{config_path} is not a snnet-ray export config ({FORMAT_VERSION}): re-export the model")
    # a multi-hop path (SN-Netv2 round trip, v1 Ti->S->B); one anchor may appear twice: built once per segment
    if "route" in spec:
        net = _load_route(spec)
        net.load_state_dict(load_file(str(weights_path)))
        return net.to(device).eval()
    anchors = create_anchors([AnchorSpec(name, dict(kw)) for name, kw in spec["anchors"]], "cpu",
                             **spec["timm_kwargs"])
    if len(anchors) == 1:
        net = StitchedNetwork(anchors[0], spec=spec)
    else:
        front, back = anchors
        (j, l), stage, layer = spec["position"], spec["stage"], spec["stitch_layer"]
        net = StitchedNetwork(
            prune_anchor(front, set(path_pieces(front, stage, j, "front"))),
            make_stitching_layer(layer["layout"], layer["in_width"], layer["out_width"], layer.get("out_layout")),
            prune_anchor(back, set(path_pieces(back, stage, l, "back"))),
            stage=stage,
            position=(j, l),
            spec=spec,
            final_norm=spec.get("final_norm", True),
        )
        del front, back
    net.load_state_dict(load_file(str(weights_path)))
    return net.to(device).eval()


def _load_route(spec: dict[str, Any]) -> RouteNetwork:
    """An empty `RouteNetwork` shaped as config.json describes (weights loaded by the caller)."""
    route, layers = spec["route"], spec["stitch_layers"]
    if not (len(spec["anchors"]) == len(route) == len(layers) + 1 >= 2):
        raise ValueError("config.json's route, anchors and stitch_layers disagree: re-export the model")
    segments = []
    for i, ((name, kw), (start, stop)) in enumerate(zip(spec["anchors"], route)):
        (anchor,) = create_anchors([AnchorSpec(name, dict(kw))], "cpu", **spec["timm_kwargs"])
        segments.append(prune_anchor(anchor, route_pieces(anchor, i, len(route), int(start), int(stop))))
    stitches = [
        make_stitching_layer(x["layout"], int(x["in_width"]), int(x["out_width"]), x.get("out_layout")) for x in layers
    ]
    bounds = [(int(a), int(b)) for a, b in route]
    return RouteNetwork(segments, stitches, bounds, spec=spec, final_norm=bool(spec.get("final_norm", True)))


def _check_formats(formats: Sequence[str] | None, example_batch: int, dynamic_batch: bool) -> tuple[str, ...]:
    if formats is None:
        formats = default_formats()
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or '(none)'}: choose from {', '.join(FORMATS)}")
    if "onnx" in formats and not onnx_available():
        raise ValueError(f"ONNX export asked for, but {ONNX_MISSING}; or leave onnx out of the formats")
    if example_batch < 1:
        raise ValueError(f"example_batch must be >= 1, got {example_batch}")
    if dynamic_batch and example_batch < 2 and {"torch_export", "onnx"} & set(formats):
        raise ValueError(
            "a dynamic batch dimension needs example_batch >= 2 (torch.export specializes sizes 0 and 1); "
            "use example_batch=2, or dynamic_batch=False for a program fixed at batch 1"
        )
    return formats


def _load_model(model_or_dir: SNNet | str | Path, cfg_id: int) -> SNNet:
    """The SN-Net to export from, with `cfg_id` checked before any weight is read."""
    if isinstance(model_or_dir, SNNet):
        model = model_or_dir
        _check_config_id(model, cfg_id)
        return model
    from snnet_ray.stitching.saving import load_snnet, resolve_model_dir

    model_dir = resolve_model_dir(str(model_or_dir))
    _check_config_id(load_snnet(model_dir, device="meta"), cfg_id)
    return load_snnet(model_dir)


def _check_config_id(model: SNNet, cfg_id: int) -> None:
    if not 0 <= cfg_id < len(model.configs):
        raise ValueError(f"config id {cfg_id} out of range; this SN-Net has configs 0..{len(model.configs) - 1}")
