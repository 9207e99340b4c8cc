"""The results page in headless Chromium: the accuracy-vs-GMACs plot is drawn, offline.

A real uvicorn server on localhost serves the page; Debian's Chromium takes a screenshot (the
plot's colours must be on it) and dumps the DOM after the page's script ran (every config's mark,
the anchors, the frontier line, and the budget slider the script fills in). The test skips,
saying why, only where Chromium is not installed and cannot be (scripts/system_deps.sh).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_results_service import ThreadServer

from snnet_ray.results import ConfigInfo, EvalRecord, LocalResults, create_app
from snnet_ray.results.chart import ANCHOR, FRONTIER, PALETTE

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 1200, 1400


def _chromium() -> str | None:
    def find() -> str | None:
        return shutil.which("chromium") or shutil.which("chromium-browser")

    if find() is None and (REPO / "scripts" / "system_deps.sh").exists():
        subprocess.run(["bash", str(REPO / "scripts" / "system_deps.sh")], check=False, capture_output=True,
                       timeout=900)
    return find()


@pytest.fixture(scope="module")
def chromium():
    path = _chromium()
    if path is None:
        pytest.skip("chromium not found and could not be installed (run scripts/system_deps.sh, "
                    "or apt-get install chromium)")
    return path


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture
def page_url(tmp_path):
    """A run with 3 anchors and 12 stitches, served by a real server on localhost."""
    results = LocalResults(tmp_path / "results.db")
    anchors = [("deit_tiny", 1.26, 72.0), ("deit_small", 4.61, 79.8), ("deit_base", 17.6, 81.8)]
    configs = [ConfigInfo(config_id=i, name=n, kind="anchor", anchors=[i], gmacs=g, params=10**6 * (i + 1))
               for i, (n, g, _) in enumerate(anchors)]
    acc = {i: a for i, (_, _, a) in enumerate(anchors)}
    for k in range(12):
        pair = 0 if k < 6 else 1
        (_, g0, a0), (_, g1, a1) = anchors[pair], anchors[pair + 1]
        t = (k % 6 + 0.5) / 6
        configs.append(ConfigInfo(config_id=3 + k, name=f"{pair}-{pair + 1}:{k % 6},{k % 6 + 1}",
                                  anchors=[pair, pair + 1], gmacs=g0 + (g1 - g0) * t))
        acc[3 + k] = a0 + (a1 - a0) * t ** 0.5 - (1.5 if k % 2 else 0.0)
    results.register_run("deit-snnet", status="finished", hyperparameters={"lr": 5e-5})
    results.put_configs("deit-snnet", configs)
    results.ingest([
        EvalRecord(run="deit-snnet", checkpoint="final", config_id=c, shard=f"val-{s}", samples=500,
                   top1_correct=round(5 * a), top5_correct=490)
        for c, a in acc.items() for s in range(2)
    ])
    with ThreadServer(create_app(results.store)) as server:
        yield f"{server.url}/runs/deit-snnet"
    results.close()


def test_results_page_renders_the_plot_in_chromium(chromium, page_url, tmp_path):
    shot = tmp_path / "page.png"
    done = _run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", page_url)
    assert shot.exists(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"

    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200, "the page looks blank"
    counts = dict((rgb, n) for n, rgb in colors)

    def near(hex_color: str, opacity: float = 1.0, tol: int = 12) -> int:
        # Pixels of this colour painted at `opacity` over white.
        rgb0 = [int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]
        target = tuple(round(opacity * c + (1 - opacity) * 255) for c in rgb0)
        return sum(n for rgb, n in counts.items() if all(abs(a - b) <= tol for a, b in zip(rgb, target)))

    # The frontier line and rings, the anchors' diamonds, and both stitch pairs' points are painted.
    assert near(FRONTIER) > 300
    assert near(ANCHOR) > 200
    assert near(PALETTE[0], opacity=0.85) > 150 and near(PALETTE[1], opacity=0.85) > 150


def test_results_page_dom_has_every_mark_and_the_script_ran(chromium, page_url, tmp_path):
    done = _run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", page_url)
    dom = done.stdout
    assert "<svg" in dom, f"no page in chromium's DOM dump: {done.stderr[-2000:]}"
    assert len(re.findall(r'class="pt anchor', dom)) == 3
    assert len(re.findall(r'class="pt stitch', dom)) == 12
    assert len(re.findall(r'<polyline class="frontier"', dom)) == 1
    assert re.search(r'class="pt anchor[^"]*" data-config="2"', dom)
    # The offline script (served from static/) ran: it shows the budget slider and fills it in.
    assert re.search(r'<div class="budget">', dom), "the page script did not run"
    assert re.search(r"best is deit_base at 81\.80%", dom)
    # Nothing is fetched from outside localhost.
    assert not re.search(r'(src|href)="https?://(?!127\.0\.0\.1)', dom)
