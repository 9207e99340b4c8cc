"""The SN-Net training loss: soft-target cross-entropy plus optional hard distillation.

SN-Net (Pan et al., CVPR 2023) follows DeiT: each stitch's logits are trained with
cross-entropy against the mixup/cutmix soft targets, and, when a teacher is given (the paper's
is RegNetY-160), with hard distillation, cross-entropy against the teacher's argmax on the same
(mixed) images:

    loss = soft_weight x CE(logits, soft_targets) + distill_weight x CE(logits, argmax teacher(images))

with 0.5 / 0.5 in the paper; without a teacher, soft_weight = 1. Integer targets (mixup off)
take plain cross-entropy with label smoothing.

    teacher = load_teacher("regnety_160", "weights/regnety_160.safetensors", num_classes=1000)
    criterion = SNNetLoss(teacher)
    loss = criterion(logits, targets, images)

The teacher is a timm model loaded from a local weights file (no hub), kept in eval mode with
gradients off; it is not part of the DeepSpeed engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LossConfig", "SNNetLoss", "load_teacher"]

log = logging.getLogger(__name__)


@dataclass
class LossConfig:
    """Loss weights and the optional distillation teacher."""

    teacher: str | None = None
    """timm model name of the teacher (e.g. 'regnety_160'); None trains without distillation."""
    teacher_weights: str | None = None
    """Local weights file of the teacher (safetensors or torch); required with a teacher."""
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra timm kwargs for the teacher (e.g. img_size)."""
    soft_weight: float | None = None
    """Weight of the soft-target cross-entropy; None: 0.5 with a teacher, else 1.0."""
    distill_weight: float | None = None
    """Weight of the hard distillation; None: 0.5 with a teacher, else 0."""
    label_smoothing: float = 0.0
    """Label smoothing when targets are class indices (mixup/cutmix off)."""

    def __post_init__(self) -> None:
        if self.teacher and not self.teacher_weights:
            raise ValueError(
                f"loss.teacher={self.teacher!r} needs loss.teacher_weights (a safetensors or torch file, local or "
                "an object-store URL)"
            )
        if self.teacher_weights and not self.teacher:
            raise ValueError("loss.teacher_weights is set but loss.teacher (the timm model name) is not")
        if (self.distill_weight or 0) > 0 and not self.teacher:
            raise ValueError(f"loss.distill_weight={self.distill_weight} needs a teacher (loss.teacher)")
        for name in ("soft_weight", "distill_weight", "label_smoothing"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {value}")

    def check_files(self) -> None:
        """Raise FileNotFoundError for a missing teacher weights file (before workers start). An
        object-store URL (s3://, gs://, https://) is fetched by each node where it trains, not here:
        the driver (a head node that runs no training) need not hold the file."""
        from snnet_ray.data.node_cache import is_remote

        if is_remote(self.teacher_weights):
            return
        if self.teacher_weights and not Path(self.teacher_weights).expanduser().is_file():
            raise FileNotFoundError(
                f"loss.teacher_weights not found: {self.teacher_weights}; give the {self.teacher} teacher's weights "
                "file (for regnety_160, DeiT's teacher: timm's regnety_160.deit_in1k, or "
                "https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth) with --set loss.teacher_weights=FILE, "
                "or --set loss.teacher=null --set loss.teacher_weights=null --set loss.distill_weight=0 to train "
                "without distillation"
            )

    def build(self, num_classes: int, device: torch.device | str = "cpu") -> SNNetLoss:
        """The criterion, loading the teacher (if any) onto `device`."""
        teacher = None
        if self.teacher:
            from snnet_ray.data.node_cache import fetch_to_node

            weights = str(fetch_to_node(self.teacher_weights))  # once per node; a local path as it is
            teacher = load_teacher(self.teacher, weights, num_classes, device=device, **self.teacher_kwargs)
        return SNNetLoss(teacher, self.soft_weight, self.distill_weight, self.label_smoothing)


class SNNetLoss(nn.Module):
    """soft_weight x soft-target CE + distill_weight x hard distillation against `teacher`.

    Args:
        teacher: frozen classifier for hard distillation, or None.
        soft_weight: None -> 0.5 with a teacher, 1.0 without.
        distill_weight: None -> 0.5 with a teacher, 0 without.
        label_smoothing: for integer targets.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        soft_weight: float | None = None,
        distill_weight: float | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if (distill_weight or 0) > 0 and teacher is None:
            raise ValueError(f"distill_weight={distill_weight} needs a teacher")
        self.soft_weight = (0.5 if teacher is not None else 1.0) if soft_weight is None else soft_weight
        self.distill_weight = (0.5 if teacher is not None else 0.0) if distill_weight is None else distill_weight
        self.label_smoothing = label_smoothing
        self.teacher = _freeze(teacher) if teacher is not None else None

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.terms(logits, targets, images)["loss"]

    def terms(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The total `loss` and its parts (`soft_ce`, and `distill` with a teacher)."""
        logits = logits.float()  # bf16 logits: the log-softmax wants fp32
        if targets.ndim == logits.ndim:
            soft = torch.sum(-targets.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            soft = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        out = {"soft_ce": soft}
        loss = self.soft_weight * soft
        if self.teacher is not None and self.distill_weight > 0:
            if images is None:
                raise ValueError("hard distillation needs the (mixed) images: call criterion(logits, targets, images)")
            with torch.no_grad():
                param = next(self.teacher.parameters())
                teacher_labels = self.teacher(images.to(param.device, param.dtype)).argmax(dim=-1)
            out["distill"] = F.cross_entropy(logits, teacher_labels)
            loss = loss + self.distill_weight * out["distill"]
        out["loss"] = loss
        return out

    def train(self, mode: bool = True) -> SNNetLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains (dropout, batch-norm statistics)
        return self


def load_teacher(
    name: str,
    weights: str | Path | None,
    num_classes: int,
    device: torch.device | str = "cpu",
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm classifier with weights from a local file, in eval mode with gradients off.

    The file must hold a head for `num_classes` (the student's classes): a teacher that
    predicts other classes cannot be distilled from.
    """
    import timm

    from snnet_ray.anchors.weights import checkpoint_num_classes

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model for the teacher: {name!r}; see timm.list_models()")
    if weights is None:
        raise ValueError(f"teacher {name!r} needs a weights file (safetensors or torch)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}; check loss.teacher_weights")
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    file_classes = checkpoint_num_classes(path, probe)
    if file_classes is not None and file_classes != num_classes:
        raise ValueError(
            f"teacher weights {path} have a {file_classes}-class head but the SN-Net has {num_classes} classes; "
            "distillation needs a teacher trained on the same classes"
        )
    with torch.device(device):
        model = timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path), "num_classes": num_classes},
            num_classes=num_classes,
            **timm_kwargs,
        )
    log.info("teacher %s: weights from %s", name, path)
    return _freeze(model)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
