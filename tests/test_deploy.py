"""Deployment: one config extracted and exported equals its SNNet path; selection by budget; the CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from tiny_families import FAMILIES, tiny_snnet

from snnet_ray.cli import main
from snnet_ray.deploy import export_config, extract_config, load_exported, select_config
from snnet_ray.deploy.export import onnx_available
from snnet_ray.eval.distributed import register_configs
from snnet_ray.results import EvalRecord, LocalResults, ResultsNotFound
from snnet_ray.stitching import save_snnet

_MODELS: dict[str, object] = {}


def _model(family: str):
    """One tiny SN-Net per family for the whole module, in eval mode (read-only in every test)."""
    if family not in _MODELS:
        torch.manual_seed(0)
        _MODELS[family] = tiny_snnet(family, rule="dense").eval()  # stitches that skip blocks in every stage
    return _MODELS[family]


def _stitch(model, stage: int | None = None):
    """A stitch whose front and back both skip blocks, in `stage` (default: the first stitched)."""
    return next(
        c for c in model.configs
        if not c.is_anchor and c.positions[0][0] > 0 and (stage is None or c.stage == stage)
    )


# ---- extraction --------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_config_equals_its_snnet_path(family):
    model = _model(family)
    x = torch.randn(2, *model.input_size)
    for cfg in model.configs:
        net = extract_config(model, cfg.id)
        assert not net.training
        assert torch.equal(net(x), model.forward_config(x, cfg.id)), model.describe(cfg.id)
        assert net.num_params() == model.cost(cfg.id).params, model.describe(cfg.id)


def test_stitch_holds_only_its_path():
    model = _model("vit")
    cfg = _stitch(model)
    back, (j, l) = cfg.anchors[1], cfg.positions[0]
    keys = list(extract_config(model, cfg.id).state_dict())
    blocks = {part: {int(m.group(1)) for k in keys if (m := re.match(rf"{part}\.model\.blocks\.(\d+)\.", k))}
              for part in ("front", "back")}
    assert blocks == {"front": set(range(j + 1)), "back": set(range(l, model.anchors[back].stage_depths[0]))}
    assert {k.split(".")[0] for k in keys} == {"front", "stitch", "back"}
    assert not [k for k in keys if k.startswith(("back.model.patch_embed", "back.model.cls_token",
                                                  "back.model.pos_embed", "front.model.head", "front.model.norm."))]
    # and the anchors' own key names, so a timm state dict maps onto it
    assert "front.model.patch_embed.proj.weight" in keys and "back.model.head.weight" in keys


def test_swin_stitch_drops_other_stages():
    model = _model("swin")
    cfg = _stitch(model, stage=1)
    keys = list(extract_config(model, cfg.id).state_dict())
    stages = {part: {int(m.group(1)) for k in keys if (m := re.match(rf"{part}\.model\.layers\.(\d+)\.", k))}
              for part in ("front", "back")}
    assert stages == {"front": {0, 1}, "back": {1, 2, 3}}
    assert not [k for k in keys if k.startswith(("back.model.patch_embed", "front.model.head", "front.model.norm"))]


def test_anchor_config_is_the_whole_anchor():
    model = _model("resnet")
    net = extract_config(model, 1)
    assert net.is_anchor and net.stitch is None and net.back is None
    assert list(net.state_dict()) == [f"front.model.{k}" for k in model.anchors[1].model.state_dict()]


def test_extract_rejects_a_bad_config_id():
    with pytest.raises(ValueError, match="out of range"):
        extract_config(_model("vit"), 999)


# ---- export ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_round_trip(family, tmp_path):
    model = _model(family)
    cfg = _stitch(model)
    summary = export_config(model, cfg.id, tmp_path / "out", formats=("safetensors", "torch_export"))
    assert set(summary.files) == {"safetensors", "torch_export", "config"}
    x = torch.randn(3, *model.input_size)
    expected = model.forward_config(x, cfg.id)

    weights = load_file(str(summary.files["safetensors"]))
    loaded = load_exported(tmp_path / "out")
    assert summary.params == model.cost(cfg.id).params == loaded.num_params()
    assert set(weights) == set(loaded.state_dict())
    assert torch.equal(loaded(x), expected)

    program = torch.export.load(summary.files["torch_export"]).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), expected, rtol=1e-5, atol=1e-5)
        # the batch dimension is dynamic: one image works too
        torch.testing.assert_close(program(x[:1]), expected[:1], rtol=1e-4, atol=1e-5)


def test_export_from_a_training_checkpoint_keeps_only_the_path(tmp_path):
    model = _model("vit")
    save_snnet(model, tmp_path / "checkpoint_000003" / "model")
    cfg = _stitch(model)
    summary = export_config(tmp_path / "checkpoint_000003", cfg.id, tmp_path / "out", formats=["safetensors"])

    weights = load_file(str(summary.files["safetensors"]))
    # ViT has no buffers: the file's tensors are exactly the path's parameters
    assert sum(t.numel() for t in weights.values()) == model.cost(cfg.id).params
    full = load_file(str(tmp_path / "checkpoint_000003" / "model" / "model.safetensors"))
    assert sum(t.numel() for t in weights.values()) < sum(t.numel() for t in full.values()) / 2

    config = json.loads(summary.files["config"].read_text())
    data = model.data_config
    assert config["config_id"] == cfg.id and config["config_name"] == cfg.name
    assert config["path"] == model.describe(cfg.id)
    assert config["gmacs"] == pytest.approx(model.cost(cfg.id).gmacs)
    assert config["params"] == model.cost(cfg.id).params
    assert config["input_size"] == list(model.input_size)
    assert config["mean"] == pytest.approx(list(data["mean"])) and config["std"] == pytest.approx(list(data["std"]))
    assert [name for name, _ in config["anchors"]] == [model.anchor_names[a] for a in cfg.anchors]
    x = torch.randn(2, *model.input_size)
    assert torch.equal(load_exported(tmp_path / "out")(x), model.forward_config(x, cfg.id))


def test_export_checks_its_arguments_before_writing(tmp_path):
    model = _model("vit")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="out of range"):
        export_config(model, 999, out)
    with pytest.raises(ValueError, match="unknown export formats"):
        export_config(model, 0, out, formats=["tflite"])
    with pytest.raises(ValueError, match="example_batch >= 2"):
        export_config(model, 0, out, example_batch=1)
    with pytest.raises(FileNotFoundError, match=r"snnet\.json"):
        export_config(tmp_path, 0, out)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_exported(tmp_path)


@pytest.mark.skipif(onnx_available(), reason="onnx is installed here")
def test_onnx_is_skipped_with_a_message_when_not_installed(tmp_path):
    model = _model("resnet")
    with pytest.raises(ValueError, match="pip install onnx onnxscript"):
        export_config(model, 0, tmp_path / "out", formats=["onnx"])
    summary = export_config(model, 0, tmp_path / "out", formats=None, example_batch=2)
    assert "onnx" in summary.skipped and "pip install onnx" in summary.skipped["onnx"]
    assert "onnx" not in summary.files


def test_onnx_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = _model("resnet")
    summary = export_config(model, _stitch(model).id, tmp_path / "out", formats=["onnx"])
    onnx.checker.check_model(str(summary.files["onnx"]))


# ---- selection by budget -----------------------------------------------------------------

RUN = "tiny-vit"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite results store holding a run of the tiny ViT: every config evaluated, latency on cpu."""
    root = tmp_path_factory.mktemp("deploy")
    model = _model("vit")
    model_dir = save_snnet(model, root / "run" / "checkpoint_000001" / "model")
    db = root / "results.db"
    with LocalResults(str(db)) as results:
        results.register_run(RUN, experiment={"model_dir": str(model_dir)})
        results.register_run("no-path", experiment={"lr": 1e-3})
        for run in (RUN, "no-path"):
            register_configs(results, run, model)
            # distinct accuracies, not monotone in cost: some configs are off the frontier
            results.ingest(
                EvalRecord(run=run, checkpoint="final", config_id=c.id, shard="val-000000.tar", samples=100,
                           top1_correct=(37 * c.id) % 100, top5_correct=100)
                for c in model.configs
            )
        results.put_latency(RUN, "cpu", {c.id: 1000 * model.cost(c.id).gmacs for c in model.configs})
    return db, model_dir


def _expected_best(model, max_gmacs: float) -> int:
    fits = [c.id for c in model.configs if model.cost(c.id).gmacs <= max_gmacs]
    return max(fits, key=lambda i: (37 * i) % 100)


def _median_gmacs(model) -> float:
    return sorted(model.cost(c.id).gmacs for c in model.configs)[len(model.configs) // 2]


def test_select_under_a_budget(store):
    db, _ = store
    model = _model("vit")
    budget = _median_gmacs(model)
    with LocalResults(str(db)) as results:
        row = select_config(results, RUN, max_gmacs=budget)
        assert row.config_id == _expected_best(model, budget) and row.gmacs <= budget
        assert row.top1 == (37 * row.config_id) % 100
        by_latency = select_config(results, RUN, max_latency_ms=1000 * budget, device="cpu")
        assert by_latency.config_id == row.config_id
    assert select_config(str(db), RUN, max_gmacs=budget).config_id == row.config_id  # a URL works too


def test_select_explains_an_impossible_budget(store):
    db, _ = store
    model = _model("vit")
    cheapest = min(model.configs, key=lambda c: model.cost(c.id).gmacs)
    gmacs = model.cost(cheapest.id).gmacs
    with LocalResults(str(db)) as results:
        with pytest.raises(ResultsNotFound, match=rf"cheapest evaluated config is {cheapest.id} .*{gmacs:.4g} GMACs"):
            select_config(results, RUN, max_gmacs=gmacs / 2)
        with pytest.raises(ValueError, match="give a budget"):
            select_config(results, RUN)
        with pytest.raises(ValueError, match="only applies to a latency budget"):
            select_config(results, RUN, max_gmacs=1.0, device="cpu")
        with pytest.raises(ResultsNotFound, match="unknown run"):
            select_config(results, "nope", max_gmacs=1.0)


# ---- the command line ----------------------------------------------------------------------


def test_cli_select(store, capsys):
    db, _ = store
    model = _model("vit")
    budget = _median_gmacs(model)
    assert main(["select", "--run", RUN, "--max-gmacs", str(budget), "--results", str(db), "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)["config"]
    assert chosen["config_id"] == _expected_best(model, budget)
    assert {"name", "top1", "gmacs", "params", "latency_ms"} <= set(chosen)

    assert main(["select", "--run", RUN, "--max-gmacs", str(budget), "--results", str(db)]) == 0
    assert f"config {chosen['config_id']} {chosen['name']}" in capsys.readouterr().out

    assert main(["select", "--run", RUN, "--max-gmacs", "1e-9", "--results", str(db)]) == 2
    err = capsys.readouterr().err
    assert "no config of run 'tiny-vit' fits" in err and "cheapest evaluated config" in err
    assert main(["select", "--run", RUN, "--results", str(db)]) == 2
    assert "give a budget" in capsys.readouterr().err
    assert main(["select", "--run", RUN, "--max-gmacs", "1", "--results", str(db.parent / "missing.db")]) == 2
    assert "no results database" in capsys.readouterr().err


def test_cli_export_by_budget(store, tmp_path, capsys):
    db, model_dir = store
    model = _model("vit")
    budget = _median_gmacs(model)
    checkpoint = model_dir.parent
    out = tmp_path / "out"
    argv = ["export", "--checkpoint", str(checkpoint), "--run", RUN, "--max-gmacs", str(budget),
            "--results", str(db), "--out", str(out), "--formats", "safetensors,torch_export", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    cfg_id = _expected_best(model, budget)
    assert summary["config_id"] == cfg_id and summary["selected"]["config_id"] == cfg_id
    assert summary["params"] == model.cost(cfg_id).params
    assert set(summary["files"]) == {"safetensors", "torch_export", "config"}
    assert all(f["bytes"] > 0 for f in summary["files"].values())
    x = torch.randn(2, *model.input_size)
    assert torch.equal(load_exported(out)(x), model.forward_config(x, cfg_id))


def test_cli_export_by_id_finds_the_runs_checkpoint(store, tmp_path, capsys):
    db, _ = store
    model = _model("vit")
    out = tmp_path / "out"
    argv = ["export", "--run", RUN, "--config", "4", "--results", str(db), "--out", str(out),
            "--formats", "safetensors"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"exported config 4 ({model.configs[4].name}" in text and "model.safetensors" in text
    assert f"{model.cost(4).params / 1e6:.3f} M params" in text
    x = torch.randn(2, *model.input_size)
    assert torch.equal(load_exported(out)(x), model.forward_config(x, 4))

    argv = ["export", "--run", "no-path", "--config", "4", "--results", str(db), "--out", str(tmp_path / "o2")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stores no checkpoint path" in err and "--checkpoint PATH" in err
    assert not (tmp_path / "o2").exists()

    argv = ["export", "--run", RUN, "--max-gmacs", "1e-9", "--results", str(db), "--out", str(tmp_path / "o3")]
    assert main(argv) == 2
    assert "cheapest evaluated config" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()
