"""Official SN-Net checkpoints (ziplab/SN-Net releases) as saved SNNets of this package.

    import_official("deit", "snnet_deit.pth", "models/snnet_deit")   # -> a saved SNNet directory
    snnet-ray import-official --family deit --checkpoint snnet_deit.pth --out models/snnet_deit

The official code builds its spaces with the rules that `rule='paper'` reproduces, so every
config id, position and shared stitching layer of a release has its counterpart here, and
`final_norm='v1'` runs the official v1 paths (DeiT stitches skip the back anchor's final norm).
Keys are mapped, never guessed: anchors keep timm's names (official Swin code puts `PatchMerging`
at the end of `layers[s]`, timm at the start of `layers[s + 1]`, and its classifier is `head`
where timm's is `head.fc`); stitching layers `stitch_layers.<stage>.<pair>.<window>.transform.*`
become `stitch_layers.<index>.*`. Keys with nothing to load into are named and counted: Swin's
`relative_position_index`/`attn_mask` (rebuilt from the architecture) and split-BN auxiliary
batch norms of the ResNet releases (`aux_bn`, used only while training). Anything else left over,
or anything missing, is an error.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from snnet_ray.stitching.saving import save_snnet
from snnet_ray.stitching.snnet import SNNet
from snnet_ray.stitching.space import StitchLayerSpec, anchor_pairs

__all__ = [
    "OFFICIAL_RELEASES",
    "ImportReport",
    "OfficialRelease",
    "build_official_snnet",
    "convert_official_state_dict",
    "import_official",
    "load_official_checkpoint",
    "official_layer_key",
]


def _same(key: str) -> str | None:
    return key


def _swin_key(key: str) -> str | None:
    if key.endswith(("relative_position_index", "attn_mask")):
        return None  # buffers timm rebuilds from the architecture
    key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


def _resnet_key(key: str) -> str | None:
    return None if ".aux_bn." in key else key  # split-BN auxiliary norms: training-time only


@dataclass(frozen=True)
class OfficialRelease:
    """One official SN-Net release: its anchors and how their keys map onto timm's."""

    name: str
    anchors: tuple[str, ...]
    key_maps: tuple[Callable[[str], str | None], ...]
    state_dict_location: str
    published: str
    timm_kwargs: Mapping[str, Any] = field(default_factory=lambda: {"num_classes": 1000})


OFFICIAL_RELEASES: dict[str, OfficialRelease] = {
    "deit": OfficialRelease(
        "deit", ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"),
        (_same, _same, _same), "model", "deit",
    ),
    "swin": OfficialRelease(
        "swin", ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"),
        (_swin_key, _swin_key, _swin_key), "model", "swin",
    ),
    "resnet": OfficialRelease("resnet", ("resnet18", "resnet50"), (_resnet_key, _resnet_key), "state_dict", "resnet"),
    "resnet_swin": OfficialRelease(
        "resnet_swin", ("resnet18", "swin_tiny_patch4_window7_224"), (_resnet_key, _swin_key), "state_dict",
        "resnet_swin",
    ),
}  # fmt: skip


@dataclass
class ImportReport:
    """What happened to every key of the official state dict."""

    loaded: int = 0
    rebuilt_buffers: list[str] = field(default_factory=list)
    split_bn_aux: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.loaded + len(self.rebuilt_buffers) + len(self.split_bn_aux)


def _release(family: str) -> OfficialRelease:
    try:
        return OFFICIAL_RELEASES[family]
    except KeyError:
        raise ValueError(f"unknown official release {family!r}; known: {', '.join(OFFICIAL_RELEASES)}") from None


def official_layer_key(model: SNNet, spec: StitchLayerSpec) -> str:
    """The official code's module prefix of a stitching layer (`stitch_layers.<stage>.<pair>.<window>`).

    Single-stage (DeiT): `stitch_layers.<pair>.<window>`. Hierarchical: the outer index counts the
    stitched stages (Swin 0..2, ResNet 1, 2 -> 0, 1), then the pair, then the layer.
    """
    pair = anchor_pairs(len(model.anchors), model.nearest).index((spec.front, spec.back))
    if all(a.num_stages == 1 for a in model.anchors):
        return f"stitch_layers.{pair}.{spec.window}"
    stages = sorted({s.stage for s in model.layer_specs})
    return f"stitch_layers.{stages.index(spec.stage)}.{pair}.{spec.window}"


def build_official_snnet(family: str, device: torch.device | str = "cpu") -> SNNet:
    """The SNNet an official release loads into: its anchors, rule='paper', final_norm='v1'."""
    r = _release(family)
    return SNNet.from_timm(list(r.anchors), rule="paper", final_norm="v1", device=device, **r.timm_kwargs)


def load_official_checkpoint(path: str | Path, location: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint file, loaded without unpickling code.

    torch files load with `weights_only=True`; raw training checkpoints also hold `args`
    (argparse.Namespace), which is allowed as plain data. Safetensors files load as they are.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} holds Python objects that weights-only loading refuses ({err}); extract the state dict "
            "where you trust the file: torch.save(torch.load(F, weights_only=False)['model'], 'state.pth') "
            "('state_dict' for the ResNet releases), then import state.pth"
        ) from None
    return _unwrap(obj, location)


def _unwrap(obj: Any, location: str | None) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ([location] if location else []) + ["model", "state_dict", "model_ema", "state_dict_ema"]:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("the checkpoint holds no state dict of tensors (looked under 'model' and 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_official_state_dict(
    model: SNNet, state: Mapping[str, torch.Tensor], family: str
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Official keys -> this SNNet's keys, every key accounted for; shapes checked."""
    r = _release(family)
    if len(model.anchors) != len(r.anchors) or model.anchor_order != list(range(len(r.anchors))):
        raise ValueError(f"the model does not hold the {family} release's anchors {list(r.anchors)} in order")
    layer_of = {official_layer_key(model, s): s.index for s in model.layer_specs}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    report = ImportReport()
    unknown = []
    for key, value in state.items():
        m = re.match(r"^anchors\.(\d+)\.(.+)$", key)
        if m and int(m.group(1)) < len(r.anchors):
            mapped = r.key_maps[int(m.group(1))](m.group(2))
            if mapped is None:
                (report.split_bn_aux if ".aux_bn." in key else report.rebuilt_buffers).append(key)
                continue
            ours = f"anchors.{m.group(1)}.model.{mapped}"
        else:
            m = re.match(r"^(stitch_layers\.[\d.]+)\.transform\.(weight|bias)$", key)
            if not m or m.group(1) not in layer_of:
                unknown.append(key)
                continue
            ours = f"stitch_layers.{layer_of[m.group(1)]}.{m.group(2)}"
        if ours not in target:
            unknown.append(key)
            continue
        if tuple(target[ours].shape) != tuple(value.shape):
            raise ValueError(f"{key}: shape {tuple(value.shape)} does not fit {ours} {tuple(target[ours].shape)}")
        out[ours] = value
        report.loaded += 1
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys of the checkpoint fit no part of the {family} SN-Net, e.g. {unknown[:3]}"
        )
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} keys of the {family} SN-Net, e.g. {missing[:3]}")
    return out, report


def import_official(
    family: str,
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    out_dir: str | Path,
) -> tuple[Path, ImportReport]:
    """Turn an official checkpoint (file or state dict) into a saved SNNet in `out_dir`."""
    r = _release(family)
    state = (
        checkpoint if isinstance(checkpoint, Mapping) else load_official_checkpoint(checkpoint, r.state_dict_location)
    )
    model = build_official_snnet(family)
    converted, report = convert_official_state_dict(model, state, family)
    model.load_state_dict(converted, strict=True)
    extra = {
        "imported_from": {"release": family, "file": None if isinstance(checkpoint, Mapping) else str(checkpoint)},
        "published": r.published,
        "import_report": {"loaded": report.loaded, "rebuilt_buffers": len(report.rebuilt_buffers),
                          "split_bn_aux": len(report.split_bn_aux)},
    }  # fmt: skip
    return save_snnet(model, out_dir, extra=extra), report
