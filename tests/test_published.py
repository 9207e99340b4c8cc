"""Published SN-Net results shipped in the package, and a run put beside them (CLI, API, page)."""

from __future__ import annotations

import itertools
import json

import pytest
from fastapi.testclient import TestClient

from snnet_ray import SNNet
from snnet_ray.cli import main
from snnet_ray.reference import list_published, load_published
from snnet_ray.reference.published import parse_published
from snnet_ray.results import ConfigInfo, EvalRecord, LocalResults, create_app
from snnet_ray.results.published import compare_published, published_table


def test_packaged_releases_and_their_ranges():
    assert {"deit", "swin", "resnet", "resnet_swin"} <= set(list_published())
    deit = load_published("deit")
    assert len(deit.configs) == 71 and deit.source["repo"] == "ziplab/SN-Net"
    assert min(c.gmacs for c in deit.configs) == pytest.approx(1.258, abs=1e-3)
    assert max(c.acc1 for c in deit.configs) == pytest.approx(82.04, abs=0.01)
    front = deit.frontier()
    assert front[0].id == 0 and all(a.gmacs <= b.gmacs and a.acc1 < b.acc1 for a, b in itertools.pairwise(front))
    swin = load_published("swin")
    assert (len(swin.configs), swin.configs[2].acc1) == (41, pytest.approx(84.21, abs=0.01))
    with pytest.raises(ValueError, match="no published results called 'levit2'; available: deit"):
        load_published("levit2")
    with pytest.raises(ValueError, match="finite number"):
        parse_published({"format": "snnet-ray/published/1", "configs": [{"id": 0, "acc1": float("nan"), "gmacs": 1}]})


def _run(results: LocalResults, run: str, model: SNNet, top1: dict[int, float]) -> None:
    results.put_configs(run, [
        ConfigInfo(config_id=c.id, name=c.name, kind=c.kind, anchors=list(c.anchors), gmacs=model.cost(c.id).gmacs)
        for c in model.configs
    ])  # fmt: skip
    results.ingest([
        EvalRecord(run=run, checkpoint="final", config_id=c, shard="val-0", samples=1000,
                   top1_correct=round(acc * 10), top5_correct=1000)
        for c, acc in top1.items()
    ])  # fmt: skip


def test_a_run_beside_the_published_results(tmp_path, capsys):
    model = SNNet.from_timm("resnet18,resnet50", device="meta")  # rule paper: the published layout
    pub = load_published("resnet")
    db = tmp_path / "r.db"
    with LocalResults(db) as results:
        _run(results, "mine", model, {c.id: c.acc1 - 1.0 for c in pub.configs})
        dense = SNNet.from_timm("resnet18,resnet50", device="meta", rule="dense")
        _run(results, "dense", dense, {c.id: 50.0 for c in dense.configs})
        cmp = compare_published(results.table("mine"), "resnet")
        assert cmp.run_a == "published:resnet" and len(cmp.rows) == 10
        assert all(r.delta == pytest.approx(-1.0, abs=0.06) for r in cmp.rows)
        assert cmp.summaries[0].frontier_size == len(pub.frontier())
        with pytest.raises(ValueError, match="does not have the published resnet layout.*model.rule=paper"):
            compare_published(results.table("dense"), "resnet")

        client = TestClient(create_app(results.store))
        page = client.get("/published/resnet", params={"run": "mine"})
        assert page.status_code == 200 and "published:resnet vs mine" in page.text
        assert client.get("/published/resnet").status_code == 200
        api = client.get("/api/published/resnet", params={"run": "mine"}).json()
        assert api["run_a"] == "published:resnet" and api["rows"][2]["top1_a"] == pytest.approx(77.468)
        assert client.get("/api/published/nope").status_code == 404
        assert "/published/deit" in client.get("/").text

    assert main(["results", "compare", "--db", str(db), "--run", "mine", "--published", "resnet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_b"] == "mine" and len(out["rows"]) == 10
    assert main(["results", "compare", "--db", str(db), "--run", "mine"]) == 2
    assert "exactly one of --against" in capsys.readouterr().err


def test_published_table_names_match_the_paper_rule():
    model = SNNet.from_timm("resnet18,swin_tiny_patch4_window7_224", device="meta")
    assert [r.name for r in published_table("resnet_swin").rows] == [c.name for c in model.configs]
