"""Elastic serving end to end: `snnet-ray serve`'s application on a real local Ray, over HTTP.

One module-scoped Ray cluster and Serve application (a tiny DeiT-like SN-Net saved with save_snnet,
its per-config top-1 in a results database), then what a user checks: answers that equal the SNNet's
own output for the config reported, budgets and pinned configs honoured, every bad request refused
with a 4xx naming the problem (and documented in the OpenAPI), the frontier listed with the latency
measured on the replica and stored in the results service, and a new checkpoint rolled out (with
autoscaling switched on) while requests keep flowing, none dropped.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib

import httpx
import pytest
import torch

from snnet_ray.serve.images import ImageError, decode_image
from tests.tiny_families import tiny_snnet

RUN = "served-run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(size=(40, 30), color=(200, 10, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels, its data a few kB of zlib."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    data = zlib.compress(row * 64, 9)  # the rows are cut short: the header is what matters
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ---- decoding, without Ray ----------------------------------------------------------------------


def test_decode_refuses_bombs_truncation_and_other_formats():
    img = decode_image(_png(), max_bytes=1 << 20, max_pixels=10_000)
    assert img.mode == "RGB" and img.size == (40, 30)
    with pytest.raises(ImageError, match="5000x5000 pixels; the limit is 1000000") as err:
        decode_image(_bomb_png(5_000, 5_000), max_bytes=1 << 20, max_pixels=1_000_000)
    assert err.value.too_large
    with pytest.raises(ImageError, match="too large to decode"):  # Pillow's own guard, past ours
        decode_image(_bomb_png(60_000, 60_000), max_bytes=1 << 20, max_pixels=1 << 40)
    with pytest.raises(ImageError, match="limit is 100"):
        decode_image(_png(), max_bytes=100, max_pixels=10_000)
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_image(_png()[:-30], max_bytes=1 << 20, max_pixels=10_000)
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(gif, "GIF")
    with pytest.raises(ImageError, match="not a JPEG or PNG"):
        decode_image(gif.getvalue(), max_bytes=1 << 20, max_pixels=10_000)
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", max_bytes=1 << 20, max_pixels=10_000)


def test_serve_command_checks_scaling_and_results_flags():
    from snnet_ray.cli import build_parser, main
    from snnet_ray.serve.commands import _scaling

    parser = build_parser()
    args = parser.parse_args(["serve", "--model", "m", "--autoscaling", "--max-replicas", "3"])
    assert _scaling(args) == {"num_replicas": None, "autoscaling": {
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 16.0,
        "upscale_delay_s": 5.0, "downscale_delay_s": 120.0}}
    assert _scaling(parser.parse_args(["serve", "--model", "m", "--num-replicas", "2"])) == {"num_replicas": 2}
    with pytest.raises(SystemExit):  # argparse: not both
        parser.parse_args(["serve", "--model", "m", "--num-replicas", "2", "--autoscaling"])
    assert main(["serve", "--model", "m", "--results", "sqlite:///x.db"]) == 2  # --run missing: explained
    assert main(["serve"]) == 2  # nothing to serve: explained


def test_serve_options_refuse_inconsistent_limits():
    from pydantic import ValidationError

    from snnet_ray.serve.options import ServeOptions

    assert ServeOptions(model="m", max_batch_size=40).batch_sizes() == [1, 2, 4, 8, 16, 32, 40]
    with pytest.raises(ValidationError, match="max_images .* must be <= max_batch_size"):
        ServeOptions(model="m", max_images=32, max_batch_size=16)
    with pytest.raises(ValidationError, match="slo_ms"):
        ServeOptions(model="m", slo_ms=float("inf"))
    with pytest.raises(ValidationError, match="extra"):
        ServeOptions(model="m", slo=50)


# ---- the application on a real local Ray --------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import ray
    from ray import serve

    from snnet_ray.results import LocalResults
    from snnet_ray.serve.app import APP_NAME, build_app
    from snnet_ray.stitching.saving import save_snnet

    tmp = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model_a = tiny_snnet("vit")
    by_gmacs = sorted(range(len(model_a.configs)), key=lambda c: model_a.cost(c).gmacs)
    # Every fourth config (by GMACs) on the frontier, the others below it: a short frontier to measure.
    top1 = {c: 60.0 + 30.0 * rank / len(by_gmacs) if rank % 4 == 0 or rank == len(by_gmacs) - 1 else 50.0
            for rank, c in enumerate(by_gmacs)}
    save_snnet(model_a, tmp / "a", extra={"data": {"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0,
                                                    "interpolation": "bilinear"}})
    torch.manual_seed(1)
    save_snnet(tiny_snnet("vit"), tmp / "b", extra={"top1": {str(c): v for c, v in top1.items()}})

    db = f"sqlite:///{tmp / 'results.db'}"
    with LocalResults(db) as results:  # what `snnet-ray eval` records: names, GMACs, counts per shard
        results.register_run(RUN, experiment={"data": {"mean": [0.5] * 3, "std": [0.5] * 3}})
        results.put_configs(RUN, [{"config_id": c.id, "name": c.name, "gmacs": model_a.cost(c.id).gmacs}
                                  for c in model_a.configs])
        results.ingest([{"run": RUN, "checkpoint": "final", "config_id": c, "shard": "val-000000",
                         "samples": 1000, "top1_correct": round(10 * acc), "top5_correct": 1000}
                        for c, acc in top1.items()])

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = {"model": str(tmp / "a"), "results": db, "run": RUN, "slo_ms": 2000.0, "max_images": 4,
               "max_batch_size": 8, "max_body_bytes": 1 << 20, "max_image_bytes": 256 << 10, "max_pixels": 1 << 20}
    serve.run(build_app(options, num_cpus=0.5), name=APP_NAME, route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        yield {"client": client, "model": model_a, "top1": top1, "tmp": tmp, "db": db, "options": options}
    finally:
        client.close()
        serve.shutdown()
        ray.shutdown()


def _classify(client: httpx.Client, data: bytes, **params) -> httpx.Response:
    return client.post("/v1/classify", content=data, headers={"content-type": "image/png"}, params=params)


@pytest.mark.slow
def test_classify_answers_top_k_of_the_config_it_reports(served):
    from timm.data import create_transform

    client, model = served["client"], served["model"]
    r = _classify(client, _png(), top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    cfg = body["config"]
    # GMACs as the results service records them (counted on the meta device).
    assert cfg["gmacs"] == pytest.approx(tiny_snnet("vit", device="meta").cost(cfg["id"]).gmacs, rel=1e-9)
    assert cfg["top1"] == pytest.approx(served["top1"][cfg["id"]], abs=0.01)
    assert set(body["time_ms"]) == {"queue", "compute", "total"} and body["time_ms"]["total"] > 0
    # The answer is the SNNet's own output for that config, under the run's validation transform.
    transform = create_transform(input_size=model.input_size, is_training=False, interpolation="bilinear",
                                 mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    x = transform(decode_image(_png(), max_bytes=1 << 20, max_pixels=1 << 20))[None]
    with torch.no_grad():
        probs = model.eval().forward_config(x, cfg["id"]).softmax(-1)[0]
    values, classes = probs.topk(3)
    (preds,) = body["predictions"]
    assert [p["class"] for p in preds] == classes.tolist()
    assert [p["probability"] for p in preds] == pytest.approx(values.tolist(), abs=1e-4)

    images = [base64.b64encode(_png(color=(i * 60, 0, 0))).decode() for i in range(3)]
    r = client.post("/v1/classify", json={"images": images, "top_k": 2})
    assert r.status_code == 200, r.text
    assert [len(p) for p in r.json()["predictions"]] == [2, 2, 2]


@pytest.mark.slow
def test_budgets_and_pinned_configs_are_honoured(served):
    client, model, top1 = served["client"], served["model"], served["top1"]
    frontier = client.get("/v1/configs").json()["configs"]
    budget = sorted(c["gmacs"] for c in frontier)[len(frontier) // 2]
    r = _classify(client, _png(), max_gmacs=budget)
    assert r.status_code == 200, r.text
    cfg = r.json()["config"]
    assert cfg["gmacs"] <= budget
    # Idle replica: the most accurate frontier config within the budget.
    assert cfg["top1"] == pytest.approx(max(c["top1"] for c in frontier if c["gmacs"] <= budget)), (
        r.json(), {k: v for k, v in client.get("/v1/configs").json().items() if k != "configs"})
    off_frontier = next(c.id for c in model.configs if c.id not in {f["id"] for f in frontier})
    r = _classify(client, _png(), config=off_frontier)
    assert r.status_code == 200 and r.json()["config"]["id"] == off_frontier and r.json()["reason"] == "pinned"
    assert r.json()["config"]["top1"] == pytest.approx(top1[off_frontier], abs=0.01)
    assert _classify(client, _png(), max_latency_ms=1500).status_code == 200


@pytest.mark.slow
def test_bad_requests_get_a_4xx_that_names_the_problem(served):
    client = served["client"]
    frontier = client.get("/v1/configs").json()["configs"]
    cheapest = min(c["gmacs"] for c in frontier)
    pinned = frontier[0]["id"]
    cases = [
        (_classify(client, b"not an image"), 400, "not a JPEG or PNG"),
        (_classify(client, _png()[:-30]), 400, "could not be decoded"),
        (_classify(client, _bomb_png(2_000, 2_000)), 413, "2000x2000 pixels; the limit is 1048576"),
        (_classify(client, _bomb_png(60_000, 60_000)), 413, "too large to decode"),
        (_classify(client, b"x" * (2 << 20)), 413, "over the limit of 1048576 bytes"),
        # A chunked body carries no Content-Length: it is counted as it arrives.
        (client.post("/v1/classify", content=iter([b"x" * (256 << 10)] * 8),
                     headers={"content-type": "image/png"}), 413, "over the limit"),
        (_classify(client, _png(), config=10_000), 422, "unknown config 10000"),
        (_classify(client, _png(), max_gmacs=cheapest / 2), 422, "no served config within max_gmacs"),
        (_classify(client, _png(), max_latency_ms=1e-4), 422, "no served config answers 1 image(s)"),
        # A pinned config is held to the latency budget too: the answer names it, its time and the budget.
        (_classify(client, _png(), config=pinned, max_latency_ms=1e-4), 422,
         f"config {pinned} needs about"),
        (_classify(client, _png(), config=pinned, max_latency_ms=1e-4), 422, "over max_latency_ms=0.0001"),
        (_classify(client, _png(), max_gmacs=-1), 422, "greater than 0"),
        (client.post("/v1/classify", json={"images": ["%%%"]}), 400, "not valid base64"),
        (client.post("/v1/classify", json={"images": []}), 422, "images"),
        (client.post("/v1/classify", json={"images": ["AA=="], "budget": 3}), 422, "budget"),
        (client.post("/v1/classify", json={"images": [base64.b64encode(_png()).decode()] * 5}), 413,
         "5 images in one request; the limit is 4"),
        (client.post("/v1/classify", content=b"{}", headers={"content-type": "text/plain"}), 415, "text/plain"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (status, message, response.text)
        assert message in str(response.json()["detail"]), (message, response.text)
    assert _classify(client, _png()).status_code == 200, "the replica still serves after the bad requests"


@pytest.mark.slow
def test_openapi_documents_the_api_and_its_errors(served):
    spec = served["client"].get("/openapi.json").json()
    classify = spec["paths"]["/v1/classify"]["post"]
    assert {"400", "413", "415", "422", "503"} <= set(classify["responses"])
    assert {"image/jpeg", "image/png", "application/json"} <= set(classify["requestBody"]["content"])
    assert "ClassifyRequest" in spec["components"]["schemas"]
    assert {"/v1/configs", "/healthz"} <= set(spec["paths"])


@pytest.mark.slow
def test_configs_lists_the_frontier_with_latency_measured_here_and_stored_in_results(served):
    from snnet_ray.results import LocalResults

    client, top1 = served["client"], served["top1"]
    info = client.get("/v1/configs").json()
    assert info["device"] == "cpu" and info["top1_source"] == f"results service run {RUN!r}"
    rows = info["configs"]
    assert [r["top1"] for r in rows] == sorted(r["top1"] for r in rows)
    assert [r["gmacs"] for r in rows] == sorted(r["gmacs"] for r in rows), "a frontier: dearer means more accurate"
    best = max(top1, key=top1.get)
    assert rows[-1]["id"] == best
    for r in rows:
        assert set(r["measured_ms"]) == {"1", "2", "4", "8"} and all(v > 0 for v in r["measured_ms"].values())
    with LocalResults(served["db"]) as results:
        table = results.table(RUN)
    stored = {row.config_id: row.latency_ms for row in table.rows}
    for r in rows:
        assert stored[r["id"]]["cpu-b8"] == pytest.approx(r["measured_ms"]["8"], rel=1e-3)


@pytest.mark.slow
def test_rolling_out_a_new_checkpoint_drops_no_request(served):
    from ray import serve

    from snnet_ray.serve.app import APP_NAME, build_app
    from snnet_ray.serve.commands import autoscaling_config

    client = served["client"]
    old = client.get("/healthz").json()["version"]
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as c:
            while not stop.is_set():
                r = _classify(c, _png())
                answers.append((r.status_code, r.json().get("version") if r.status_code == 200 else r.text))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        # The new checkpoint ranks its configs by its own metadata; autoscaling replaces the fixed count.
        options = {**served["options"], "model": str(served["tmp"] / "b"), "results": None, "run": None}
        serve.run(build_app(options, num_cpus=0.5, num_replicas=None, autoscaling=autoscaling_config(1, 2, 8)),
                  name=APP_NAME, route_prefix="/")
        deadline = time.monotonic() + 60
        while client.get("/healthz").json()["version"] == old and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)
    new = client.get("/healthz").json()["version"]
    assert new != old
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    versions = [v for _, v in answers]
    assert versions[0] == old and versions[-1] == new
    assert client.get("/v1/configs").json()["top1_source"] == "snnet.json extra.top1"

    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployment = details["applications"][APP_NAME]["deployments"]["ElasticSNNet"]
    autoscaling = deployment["deployment_config"]["autoscaling_config"]
    assert autoscaling["target_ongoing_requests"] == 8 and autoscaling["max_replicas"] == 2
