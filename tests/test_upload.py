"""Job uploads: what `ray job submit --working-dir` would ship, and `snnet-ray submit` refusing too much.

Files here are sparse (their size is what Ray and the check read, no disk is used).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from snnet_ray.cli import main
from snnet_ray.submit import MAX_UPLOAD_BYTES, UploadTooLarge, check_upload, plan_upload
from snnet_ray.submit.upload import load_runtime_env

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
MIB = 1 << 20


def _file(root: Path, rel: str, size: int = 100) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout with the project's code and the clutter a working copy collects."""
    root = tmp_path / "checkout"
    _file(root, "snnet_ray/train/trainer.py", 20_000)
    _file(root, "snnet_ray/data/shards.py", 10_000)
    _file(root, "jobs/train_swin.py", 500)
    (root / ".gitignore").write_text((ROOT / ".gitignore").read_text() + "/scratch/\n")
    for rel in ("exported/deit_cfg12/model.onnx", "model.onnx", "deit.pt2", "data/imagenet-wds/train-000000.tar",
                "ray_tmp/session_latest/logs/raylet.out", "session_2026-11-29_10-00-00_1/logs/gcs.out",
                "outputs/run1/events.bin", "weights/swin_tiny.safetensors", "checkpoints/step_1/model.pt",
                "scratch/dump.bin", ".venv/lib/torch.so"):
        _file(root, rel, 300 * MIB)
    return root


def test_upload_leaves_out_data_outputs_exports_and_ray_temp_dirs(checkout):
    plan = check_upload(checkout, load_runtime_env(RUNTIME_ENV)["excludes"])
    assert sorted(plan.files) == [".gitignore", "jobs/train_swin.py", "snnet_ray/data/shards.py",
                                  "snnet_ray/train/trainer.py"]
    assert plan.total < MIB


def test_submit_refuses_a_working_dir_over_100_mib_naming_the_largest_folders(checkout, capsys):
    _file(checkout, "notes/scans/page1.tiff", 90 * MIB)
    _file(checkout, "notes/scans/page2.tiff", 40 * MIB)
    _file(checkout, "raw_images/a.jpeg", 30 * MIB)
    code = main(["submit", "--working-dir", str(checkout), "--runtime-env", str(RUNTIME_ENV), "--",
                 "python", "jobs/train_swin.py"])
    err = capsys.readouterr().err
    assert code == 2
    assert "would upload 160.0 MiB" in err and "over Ray's 100 MiB limit" in err
    assert "Largest folders: notes/ 130.0 MiB; raw_images/ 30.0 MiB" in err
    assert ".gitignore" in err and "cluster/runtime_env.yaml" in err  # the fix
    with pytest.raises(UploadTooLarge):
        check_upload(checkout, load_runtime_env(RUNTIME_ENV)["excludes"], limit=MAX_UPLOAD_BYTES)


def test_submit_check_reports_what_would_be_uploaded(checkout, capsys):
    code = main(["submit", "--check", "--working-dir", str(checkout), "--runtime-env", str(RUNTIME_ENV)])
    assert code == 0
    assert "4 files" in capsys.readouterr().err
    assert main(["submit", "--working-dir", str(checkout), "--runtime-env", str(RUNTIME_ENV)]) == 2
    assert "give the job's command after --" in capsys.readouterr().err


def test_this_checkout_uploads_well_under_the_limit():
    plan = plan_upload(ROOT, load_runtime_env(RUNTIME_ENV)["excludes"])
    assert "snnet_ray/train/trainer.py" in plan.files and not any(p.startswith(".venv/") for p in plan.files)
    assert plan.total < MAX_UPLOAD_BYTES
