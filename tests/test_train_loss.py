"""SN-Net loss: soft-target CE on mixup targets, hard distillation from a teacher loaded from a file."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import Mixup

from snnet_ray.train.loss import LossConfig, SNNetLoss, load_teacher

TEACHER = "vit_tiny_patch16_224"
TEACHER_KWARGS = dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(1)
    model = timm.create_model(TEACHER, num_classes=10, **TEACHER_KWARGS)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model.state_dict()


def mixed_batch():
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    return mixup(images, labels)


def test_soft_target_cross_entropy_alone_without_a_teacher():
    images, targets = mixed_batch()
    assert targets.shape == (8, 10) and not torch.equal(targets.max(1).values, torch.ones(8))
    logits = torch.randn(8, 10, requires_grad=True)
    criterion = SNNetLoss()
    loss = criterion(logits, targets, images)
    expected = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    torch.testing.assert_close(loss, expected)
    assert (criterion.soft_weight, criterion.distill_weight) == (1.0, 0.0)
    loss.backward()
    assert logits.grad is not None


def test_integer_targets_use_label_smoothing():
    logits, labels = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    loss = SNNetLoss(label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_teacher_loads_from_a_file_frozen_in_eval_mode(teacher_file):
    path, state = teacher_file
    teacher = load_teacher(TEACHER, path, num_classes=10, **TEACHER_KWARGS)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, state[name])


def test_half_soft_half_hard_distillation_as_in_the_paper(teacher_file):
    path, _ = teacher_file
    criterion = LossConfig(teacher=TEACHER, teacher_weights=str(path), teacher_kwargs=TEACHER_KWARGS).build(10)
    criterion.train()
    assert not criterion.teacher.training  # the teacher stays in eval mode when the loss trains
    images, targets = mixed_batch()
    logits = torch.randn(8, 10, requires_grad=True)
    terms = criterion.terms(logits, targets, images)

    with torch.no_grad():
        teacher_labels = criterion.teacher(images).argmax(-1)
    soft = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    hard = F.cross_entropy(logits, teacher_labels)
    torch.testing.assert_close(terms["loss"], 0.5 * soft + 0.5 * hard)
    torch.testing.assert_close(terms["distill"], hard)
    terms["loss"].backward()
    assert all(p.grad is None for p in criterion.teacher.parameters())


def test_weights_are_configurable(teacher_file):
    path, _ = teacher_file
    cfg = LossConfig(teacher=TEACHER, teacher_weights=str(path), teacher_kwargs=TEACHER_KWARGS,
                     soft_weight=0.3, distill_weight=0.7)
    criterion = cfg.build(10)
    assert (criterion.soft_weight, criterion.distill_weight) == (0.3, 0.7)


def test_bad_teacher_settings_name_the_field(tmp_path, teacher_file):
    with pytest.raises(ValueError, match="loss.teacher_weights"):
        LossConfig(teacher=TEACHER)
    with pytest.raises(ValueError, match="loss.distill_weight=0.5 needs a teacher"):
        LossConfig(distill_weight=0.5)
    with pytest.raises(FileNotFoundError, match="loss.teacher_weights not found"):
        LossConfig(teacher=TEACHER, teacher_weights=str(tmp_path / "missing.safetensors")).check_files()
    with pytest.raises(ValueError, match="10-class head but the SN-Net has 100 classes"):
        load_teacher(TEACHER, teacher_file[0], num_classes=100, **TEACHER_KWARGS)
    with pytest.raises(ValueError, match="needs the \\(mixed\\) images"):
        SNNetLoss(teacher=torch.nn.Linear(2, 10))(torch.randn(2, 10), torch.tensor([0, 1]))


def test_teacher_weights_from_an_object_store_are_fetched_where_they_train(teacher_file, tmp_path, monkeypatch):
    # the head node that validates the run need not hold the file; each training node downloads it once
    import http.server
    import threading

    path, state = teacher_file
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(path.parent), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("SNNET_CACHE_DIR", str(tmp_path / "node_cache"))
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
        cfg = LossConfig(teacher=TEACHER, teacher_weights=url, teacher_kwargs=TEACHER_KWARGS)
        cfg.check_files()  # no local file asked for on the driver
        criterion = cfg.build(10)
    finally:
        httpd.shutdown()
    for name, value in criterion.teacher.state_dict().items():
        torch.testing.assert_close(value, state[name])
    assert list((tmp_path / "node_cache").rglob("*")), "the node cache holds the downloaded teacher"
