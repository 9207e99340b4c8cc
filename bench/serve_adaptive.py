"""Elastic serving under a load ramp: the adaptive policy against fixed configs, on a local Ray (CPU).

Starts `snnet-ray serve`'s application (one replica) on a local Ray, then drives the same open-loop
load through it for each policy: Poisson arrivals through low, high, spike and low phases, on
127.0.0.1 only, bounded in requests and in time. Policies: `adaptive` (the served frontier, config
chosen per batch), and `fixed` at the smallest, middle and largest anchor (the deployment's
`fixed_config`, switched by a rollout of the user_config: the same replica process, re-measured).
The schedule is identical for every policy (one seed).

Per policy: SLO attainment (answered within --slo-ms end to end, of all requests sent), the mean
top-1 of the configs served (weighted by requests), throughput, p50/p99 latency. It prints the
table, writes bench/out/serve_adaptive.json and serve_adaptive.png (latency and chosen config over
time), and ends with

    RESULT serve_slo_attainment <adaptive attainment> target >= 0.99
    RESULT serve_accuracy_vs_best_fixed <adaptive top-1 / best fixed top-1 at >= 0.99> target >= 1.0

The best fixed config is the most accurate one that also holds 0.99 attainment in this run (when
none does, the smallest anchor's top-1). Without --model, the SN-Net is DeiT-like anchors (embed
48/96/192, depth 4, 64 px, 10 classes) with random weights, and each config's top-1 is a stand-in:
a log-GMACs curve over the published DeiT-Ti/S/B range (70.6-82.0), monotone in GMACs as a trained
SN-Net's frontier is; it ranks the configs, which is all the policy reads. With --model and
--results/--run the real per-config top-1 is used.

    python bench/serve_adaptive.py [--slo-ms 200] [--phases low:5:5,high:20:6,spike:45:5,after:5:6] [--images 4]

Requests carry 4 images each (JSON, base64): per-request overhead (Serve's proxy, HTTP) is then small
next to the model's work, which is what the policy trades. Each policy gets --warmup-s of unrecorded
low-rate load after its deploy. Policies run one after another (a rollout switches them), so on a
shared machine background load differs between them: read the fixed baselines' attainment with that
in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
ANCHORS = [
    ("deit_tiny_patch16_224", dict(embed_dim=48, depth=4, num_heads=2)),
    ("deit_small_patch16_224", dict(embed_dim=96, depth=4, num_heads=4)),
    ("deit_base_patch16_224", dict(embed_dim=192, depth=4, num_heads=4)),
]
TIMM_KWARGS = dict(img_size=64, patch_size=8, num_classes=10)
DEIT_TOP1 = (70.56, 82.04)  # published DeiT-Ti/S/B SN-Net range (DESIGN §1)
MAX_REQUESTS = 20_000


def main() -> int:
    args = _parse()
    phases = _phases(args.phases)
    schedule = _schedule(phases, args.seed, args.max_requests)
    print(f"schedule: {len(schedule)} requests over {phases[-1][2]:.0f} s "
          f"({', '.join(f'{n} {r:g}/s' for n, r, _ in phases)}); SLO {args.slo_ms:g} ms")

    import ray
    from ray import serve

    from snnet_ray.serve.app import APP_NAME, ServeOptions, build_app

    model_dir, results, run = _model(args)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"images": [base64.b64encode(_image(64, i)).decode() for i in range(args.images)]}).encode()
    runs: dict[str, dict[str, Any]] = {}
    try:
        base = dict(model=model_dir, results=results, run=run, slo_ms=args.slo_ms, headroom=args.headroom,
                    up_headroom=max(args.headroom, 0.4), max_batch_size=args.max_batch, torch_threads=1)
        policies = _policies(base, ServeOptions)
        for name, options in policies:
            serve.run(build_app(options, num_cpus=1), name=APP_NAME, route_prefix="/")
            info = _wait_for(url, options)
            frontier = {c["id"]: c for c in info["configs"]}
            what = f"config {options['fixed_config']}" if options["fixed_config"] is not None else \
                f"the frontier ({len(frontier)} configs)"
            print(f"\n{name}: serving {what}")
            records = asyncio.run(_drive(url, body, schedule, args.time_limit, args.timeout_s, args.warmup_s,
                                         phases[0][1]))
            runs[name] = {"fixed_config": options["fixed_config"], "records": records,
                          **_summarise(records, args.slo_ms, phases[-1][2])}
            r = runs[name]
            print(f"  attainment {r['attainment']:.4f}  top-1 {r['mean_top1']:.2f}  {r['throughput']:.1f} req/s  "
                  f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}")
    finally:
        serve.shutdown()
        ray.shutdown()

    adaptive = runs["adaptive"]
    fixed = {k: v for k, v in runs.items() if k != "adaptive"}
    holding = [v for v in fixed.values() if v["attainment"] >= 0.99]
    best = max(holding, key=lambda v: v["mean_top1"]) if holding else fixed["fixed-smallest"]
    best_name = next(k for k, v in fixed.items() if v is best)
    ratio = adaptive["mean_top1"] / best["mean_top1"] if best["mean_top1"] else float("nan")
    _table(runs, best_name)
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {
        "slo_ms": args.slo_ms, "phases": [{"name": n, "rate": r, "until_s": t} for n, r, t in phases],
        "requests": len(schedule), "model": model_dir, "top1": "stand-in (log-GMACs curve)" if args.model is None
        else f"results run {run}" if run else "model metadata",
        "best_fixed": best_name, "accuracy_vs_best_fixed": ratio,
        "policies": {k: {kk: vv for kk, vv in v.items() if kk != "records"} for k, v in runs.items()},
        "timeline": {k: [[round(t, 4), round(ms, 2), c] for t, ms, c, _ in v["records"]] for k, v in runs.items()},
    }
    (OUT / "serve_adaptive.json").write_text(json.dumps(summary, indent=1))
    _plot(runs, phases, args.slo_ms, OUT / "serve_adaptive.png")
    print(f"\nwrote {OUT / 'serve_adaptive.json'} and {OUT / 'serve_adaptive.png'}")
    print(f"RESULT serve_slo_attainment {adaptive['attainment']:.4f} target >= 0.99")
    print(f"RESULT serve_accuracy_vs_best_fixed {ratio:.4f} target >= 1.0")
    return 0


# ---- the model ----------------------------------------------------------------------------------


def _model(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    if args.model is not None:
        from snnet_ray.stitching.saving import resolve_model_dir

        return str(Path(resolve_model_dir(args.model)).resolve()), args.results, args.run
    from snnet_ray import SNNet
    from snnet_ray.stitching.saving import save_snnet

    model = SNNet.from_timm(ANCHORS, **TIMM_KWARGS)
    gmacs = {c.id: model.cost(c.id).gmacs for c in model.configs}
    lo, hi = math.log(min(gmacs.values())), math.log(max(gmacs.values()))
    top1 = {c: DEIT_TOP1[0] + (DEIT_TOP1[1] - DEIT_TOP1[0]) * (math.log(g) - lo) / (hi - lo) for c, g in gmacs.items()}
    out = OUT / "serve_adaptive_model"
    save_snnet(model, out, extra={"top1": top1, "top1_note": "stand-in: log-GMACs curve, random weights"})
    return str(out.resolve()), None, None


def _policies(base: dict, options_cls: Any) -> list[tuple[str, dict[str, Any]]]:
    from snnet_ray.stitching.saving import load_snnet

    model = load_snnet(base["model"], device="meta")
    anchors = [c.id for c in model.configs if c.is_anchor]
    anchors.sort(key=lambda c: model.cost(c).gmacs)
    picks = {"fixed-smallest": anchors[0], "fixed-middle": anchors[len(anchors) // 2], "fixed-largest": anchors[-1]}
    out = [("adaptive", options_cls(**base).model_dump(mode="json"))]
    out += [(k, options_cls(**base, fixed_config=c).model_dump(mode="json")) for k, c in picks.items()]
    return out


# ---- load ---------------------------------------------------------------------------------------


def _phases(text: str) -> list[tuple[str, float, float]]:
    """'low:10:6,high:45:8' -> [(name, rate req/s, phase end s)]."""
    out, t = [], 0.0
    for part in text.split(","):
        name, rate, secs = part.split(":")
        rate_f, secs_f = float(rate), float(secs)
        if not (0 < rate_f <= 2000 and 0 < secs_f <= 600):
            raise SystemExit(f"phase {part!r}: need 0 < rate <= 2000 req/s and 0 < seconds <= 600")
        t += secs_f
        out.append((name, rate_f, t))
    return out


def _schedule(phases: list[tuple[str, float, float]], seed: int, max_requests: int) -> list[float]:
    rng, out, start = random.Random(seed), [], 0.0
    for _, rate, end in phases:
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end or len(out) >= max_requests:
                break
            out.append(t)
        start = end
    return out


async def _drive(url: str, body: bytes, schedule: list[float], time_limit: float, timeout_s: float,
                 warmup_s: float, warmup_rate: float) -> list[tuple[float, float, int | None, float | None]]:
    """Open loop: every request leaves at its scheduled time whatever the answers do, after an
    unrecorded warm-up at `warmup_rate` on the same connections (the rollout's work settles first).
    Returns (sent at s, latency ms or inf, config id, top-1) per request."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()
        warm = [i / warmup_rate for i in range(int(warmup_s * warmup_rate))]
        for at in warm:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            await client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
        start = time.perf_counter()

        async def one(at: float) -> tuple[float, float, int | None, float | None]:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            sent = time.perf_counter()
            try:
                r = await client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError:
                return at, math.inf, None, None
            ms = (time.perf_counter() - sent) * 1e3
            if r.status_code != 200:
                return at, math.inf, None, None
            cfg = r.json()["config"]
            return at, ms, cfg["id"], cfg["top1"]

        tasks = [asyncio.create_task(one(at)) for at in schedule if at <= time_limit]
        return list(await asyncio.gather(*tasks))


def _summarise(records: list, slo_ms: float, duration: float) -> dict[str, Any]:
    ok = [r for r in records if math.isfinite(r[1])]
    lat = sorted(r[1] for r in records)
    top1 = [r[3] for r in ok if r[3] is not None]

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else math.nan

    return {
        "requests": len(records), "errors": len(records) - len(ok),
        "attainment": sum(r[1] <= slo_ms for r in records) / max(len(records), 1),
        "mean_top1": statistics.fmean(top1) if top1 else 0.0,
        "throughput": len(ok) / duration, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "configs": sorted({r[2] for r in ok}),
    }


# ---- output -------------------------------------------------------------------------------------


def _table(runs: dict[str, dict[str, Any]], best: str) -> None:
    print(f"\n{'policy':<16}{'config':>8}{'attain':>9}{'top-1':>8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in runs.items():
        cfg = "frontier" if r["fixed_config"] is None else str(r["fixed_config"])
        mark = "  <- best fixed at >= 0.99" if name == best else ""
        print(f"{name:<16}{cfg:>8}{r['attainment']:>9.4f}{r['mean_top1']:>8.2f}{r['throughput']:>8.1f}"
              f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>8}{mark}")


def _plot(runs: dict[str, dict[str, Any]], phases: list, slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_cfg) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for i, (name, r) in enumerate(runs.items()):
        color = f"C{i}"
        t = [rec[0] for rec in r["records"]]
        ms = [min(rec[1], slo_ms * 10) for rec in r["records"]]  # timeouts drawn at 10x the SLO
        ax_lat.scatter(t, ms, s=3, label=name, alpha=0.6, color=color)
        if name == "adaptive":
            ok = [rec for rec in r["records"] if rec[3] is not None]
            ax_cfg.scatter([rec[0] for rec in ok], [rec[3] for rec in ok], s=3, color=color,
                           label="adaptive: top-1 of the config of each request")
        else:
            ax_cfg.axhline(r["mean_top1"], ls=":", lw=1.5, color=color,
                           label=f"{name} (attainment {r['attainment']:.3f})")
    ax_lat.axhline(slo_ms, color="k", lw=1, label=f"SLO {slo_ms:g} ms")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, end to end)")
    ax_cfg.set_ylabel("top-1 of the config served")
    ax_cfg.set_xlabel("time (s)")
    for ax in (ax_lat, ax_cfg):
        for _, _, end in phases[:-1]:
            ax.axvline(end, color="grey", lw=0.5)
        ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(" | ".join(f"{n} {r:g}/s" for n, r, _ in phases))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- helpers ------------------------------------------------------------------------------------


def _wait_for(url: str, options: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
    """/v1/configs once the replica serves `options` (a rollout finishes in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            info = httpx.get(f"{url}/v1/configs", timeout=10).json()
            if info.get("fixed_config") == options["fixed_config"] and info.get("slo_ms") == options["slo_ms"]:
                return info
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the replica at {url} did not come up with fixed_config={options['fixed_config']}")


def _image(size: int, seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(size * size)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slo-ms", type=float, default=200.0)
    p.add_argument("--phases", default="low:5:5,high:20:6,spike:45:5,after:5:6",
                   help="name:requests per s:seconds, comma-separated")
    p.add_argument("--max-requests", type=int, default=3000, help=f"requests per policy (<= {MAX_REQUESTS})")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds of load per policy (<= 300)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-request client timeout")
    p.add_argument("--warmup-s", type=float, default=3.0, help="unrecorded low-rate load after each deploy")
    p.add_argument("--max-batch", type=int, default=16, help="images per batch")
    p.add_argument("--images", type=int, default=4, help="images per request (1..8)")
    p.add_argument("--headroom", type=float, default=0.35,
                   help="share of the SLO kept for Serve's proxy and the client (ServeOptions.headroom)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="saved SN-Net or checkpoint (default: a random DeiT-like one)")
    p.add_argument("--results", default=None, help="results URL with the run's per-config top-1 (with --model)")
    p.add_argument("--run", default=None)
    args = p.parse_args()
    if not 0 <= args.warmup_s <= 60:
        p.error("--warmup-s must lie in 0..60")
    if not 1 <= args.images <= 8:
        p.error("--images must lie in 1..8")
    if not 1 <= args.max_requests <= MAX_REQUESTS or not 0 < args.time_limit <= 300:
        p.error(f"need 1 <= --max-requests <= {MAX_REQUESTS} and 0 < --time-limit <= 300")
    return args


if __name__ == "__main__":
    sys.exit(main())
