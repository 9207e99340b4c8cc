"""Pareto frontier, best config under a budget, frontier AUC and run comparison on a hand-made table.

The table goes through the real store (SQLite in tmp_path) from per-shard counts, so accuracies
come out of the aggregation, and every expected answer below is worked out by hand.
"""

from __future__ import annotations

import pytest

from snnet_ray.results import (
    ConfigInfo,
    EvalRecord,
    LocalResults,
    ResultsNotFound,
    best_under_budget,
    frontier_auc,
    pareto_front,
)
from snnet_ray.results.chart import Series, nice_ticks, render_chart
from snnet_ray.results.text import format_comparison, format_table

# config id: (name, kind, gmacs, top-1 %). Frontier by hand: 0, 4, 1, 7, 2.
TABLE = {
    0: ("tiny", "anchor", 1.0, 70.0),
    1: ("small", "anchor", 4.0, 80.0),
    2: ("base", "anchor", 16.0, 82.0),
    3: ("0-1:0,0", "stitch", 1.5, 69.0),  # dearer and worse than tiny
    4: ("0-1:1,1", "stitch", 2.0, 74.0),
    5: ("0-1:1,2", "stitch", 3.0, 73.0),  # dearer and worse than 4
    6: ("1-2:0,0", "stitch", 5.0, 80.0),  # as good as small, but dearer
    7: ("1-2:1,1", "stitch", 8.0, 81.0),
    8: ("1-2:1,2", "stitch", 12.0, 81.0),  # as good as 7, but dearer
    9: ("1-2:2,2", "stitch", None, 90.0),  # no GMACs known: never on the frontier
}
LATENCY_CPU = {0: 2.0, 1: 5.0, 2: 20.0, 3: 2.5, 4: 3.0, 5: 3.5, 6: 6.0, 7: 9.0, 8: 14.0, 9: 11.0}


def _records(run: str, table: dict, shards: int = 4, per_shard: int = 250) -> list[EvalRecord]:
    records = []
    for cid, (_, _, _, top1) in table.items():
        correct = round(top1 / 100 * per_shard * shards)
        # Uneven split over shards: the sums must still give the exact accuracy.
        parts = [correct // shards] * shards
        parts[0] += correct - sum(parts)
        for s, c in enumerate(parts):
            records.append(EvalRecord(run=run, checkpoint="final", config_id=cid, shard=f"val-{s}",
                                      samples=per_shard, top1_correct=c, top5_correct=per_shard))
    return records


@pytest.fixture
def results(tmp_path):
    with LocalResults(tmp_path / "results.db") as res:
        configs = [ConfigInfo(config_id=c, name=n, kind=k, anchors=[0] if k == "anchor" else [0, 1],
                              gmacs=g, params=1000 * c) for c, (n, k, g, _) in TABLE.items()]
        res.put_configs("a", configs)
        res.ingest(_records("a", TABLE))
        res.put_latency("a", "cpu", LATENCY_CPU)
        better = {c: (n, k, g, acc + (1.0 if c in (4, 5) else 0.0)) for c, (n, k, g, acc) in TABLE.items()}
        res.put_configs("b", configs)
        res.ingest(_records("b", better))
        yield res


def test_pareto_front_by_gmacs(results):
    front = results.pareto("a")
    assert [r.config_id for r in front] == [0, 4, 1, 7, 2]
    assert [r.top1 for r in front] == [70.0, 74.0, 80.0, 81.0, 82.0]
    table = results.table("a")
    assert {r.config_id for r in table.rows if r.frontier} == {0, 4, 1, 7, 2}


def test_pareto_front_by_latency(results):
    # By CPU latency config 9 (11 ms, 90 %) has a cost and dominates everything dearer than it.
    front = results.pareto("a", by="latency", device="cpu")
    assert [r.config_id for r in front] == [0, 4, 1, 7, 9]
    assert [r.config_id for r in results.pareto("a", by="latency")] == [0, 4, 1, 7, 9]


def test_best_under_budget(results):
    assert results.best("a", max_gmacs=3.5).config_id == 4
    assert results.best("a", max_gmacs=4.0).config_id == 1  # a budget is inclusive
    assert results.best("a", max_gmacs=11.0).config_id == 7
    assert results.best("a", max_gmacs=1000).config_id == 2  # config 9 has no GMACs: not eligible
    assert results.best("a", max_latency_ms=5.5, device="cpu").config_id == 1
    assert results.best("a", max_latency_ms=30).config_id == 9
    # Both budgets: within 8 GMACs and 8 ms.
    assert results.best("a", max_gmacs=8.0, max_latency_ms=8.0).config_id == 1
    with pytest.raises(ResultsNotFound, match=r"cheapest evaluated config costs 1 GMACs"):
        results.best("a", max_gmacs=0.5)
    with pytest.raises(ResultsNotFound, match="no latency recorded on device 'gpu'"):
        results.best("a", max_latency_ms=5, device="gpu")
    with pytest.raises(ValueError, match="give a budget"):
        results.best("a")


def test_ties_prefer_the_cheaper_config(results):
    rows = results.table("a").rows
    # 7 and 8 both have 81 %: the cheaper one wins; 6 only matches 1 at a higher cost.
    assert best_under_budget([r for r in rows if r.config_id in (7, 8)], max_gmacs=12).config_id == 7
    assert [r.config_id for r in pareto_front([r for r in rows if r.config_id in (1, 6)])] == [1]


def test_frontier_auc_is_the_mean_best_accuracy_over_budgets(results):
    rows = results.table("a").rows
    # Step function over [1, 16]: 70 on [1,2), 74 on [2,4), 80 on [4,8), 81 on [8,16).
    expected = (70 * 1 + 74 * 2 + 80 * 4 + 81 * 8) / 15
    assert frontier_auc(rows, 1.0, 16.0) == pytest.approx(expected)
    assert frontier_auc(rows, 4.0, 4.0) == 80.0
    assert frontier_auc(rows, 0.5, 16.0) is None  # below the cheapest config: undefined


def test_compare_runs(results):
    cmp = results.compare("a", "b")
    deltas = {r.config_id: r.delta for r in cmp.rows}
    assert deltas[4] == pytest.approx(1.0) and deltas[5] == pytest.approx(1.0)
    assert all(deltas[c] == pytest.approx(0.0) for c in deltas if c not in (4, 5))
    a, b = cmp.summaries
    assert (a.run, b.run) == ("a", "b")
    assert a.min_top1 == 69.0 and a.max_top1 == 90.0 and a.configs == 10
    assert b.mean_top1 == pytest.approx(a.mean_top1 + 2.0 / 10)
    assert cmp.gmacs_range == (1.0, 16.0)
    # b's frontier is 1 point higher on [2, 4): 2 of the 15 GMACs.
    assert b.frontier_auc - a.frontier_auc == pytest.approx(2.0 / 15)
    text = format_comparison(cmp)
    assert "+1.00" in text and "AUC" in text


def test_text_table_marks_anchors_and_frontier(results):
    text = format_table(results.table("a"))
    lines = text.splitlines()
    assert lines[0].startswith("run a · final · 10 configs evaluated")
    assert sum("◆" in line for line in lines[3:-2]) == 3
    assert sum(line.rstrip().endswith("★") for line in lines[3:-2]) == 5
    # Aligned: every row of the grid is as wide as the header rule at most.
    rule = lines[3]
    assert set(rule.replace(" ", "")) == {"─"}
    assert "best: 1-2:2,2 90.00%" in lines[-1]


def test_chart_marks_every_point_anchor_and_frontier(results):
    svg = render_chart([Series("a", results.table("a").rows)])
    assert svg.count('class="pt anchor') == 3
    assert svg.count('class="pt stitch') == 6  # config 9 has no GMACs
    assert svg.count(" front\"") == 5
    assert svg.count('<polyline class="frontier"') == 1
    assert "http://" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_nice_ticks():
    assert nice_ticks(0.0, 17.6) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert nice_ticks(69.5, 82.3) == [65.0, 70.0, 75.0, 80.0, 85.0]
    assert nice_ticks(70.2, 74.9) == [70.0, 71.0, 72.0, 73.0, 74.0, 75.0]
    assert nice_ticks(1.0, 1.0)[0] <= 1.0


def test_pages_render_for_partial_results(tmp_path):
    from snnet_ray.results.page import compare_page, index_page, run_page

    assert "No run has reported yet" in index_page([])
    with LocalResults(tmp_path / "r.db") as res:
        res.put_configs("described", [ConfigInfo(config_id=0, name="tiny", kind="anchor", gmacs=1.0)])
        res.ingest([EvalRecord(run="no-costs", checkpoint="final", config_id=0, shard="s", samples=4,
                               top1_correct=1, top5_correct=2)])
        described, no_costs = res.table("described"), res.table("no-costs")
        assert described.checkpoint is None and described.rows[0].top1 is None
        for table in (described, no_costs):
            html = run_page(table, res.get_run(table.run), base="/prefix")
            assert "No config has both an accuracy and GMACs yet." in html
            assert 'href="/prefix/static/style.css"' in html
        cmp = res.compare("described", "no-costs")
        assert cmp.gmacs_range is None
        assert "<svg" in compare_page(cmp, described, no_costs)
        assert "no-costs" in index_page(res.runs())
