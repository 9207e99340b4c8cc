"""The results service against an attacker and a careless user: secrets, bounds, names, sizes."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_results_store import db_url, postgres_url  # noqa: F401 - fixtures: a fresh database of each backend

import snnet_ray.results.store as store_module
from snnet_ray.results import ConfigInfo, EvalRecord, ResultsStore, RunInfo, create_app
from snnet_ray.results.app import MAX_BATCH, MAX_BODY_BYTES
from snnet_ray.results.chart import Series, nice_ticks, render_chart
from snnet_ray.results.redact import REDACTED, redact, redact_text
from snnet_ray.results.retry import NotYet, retry
from snnet_ray.results.schema import ConfigResult
from snnet_ray.results.text import format_runs

TOKEN = "s3cr3t-write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = [TOKEN, "pg-pa55word", "aws-k3y-value", "hyper-s3cret", "query-t0ken"]


@pytest.fixture
def service(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    with TestClient(create_app(store, token=TOKEN), raise_server_exceptions=False) as client:
        yield client, store
    store.close()


def _seed(client: TestClient, run: str = "r") -> None:
    records = [dict(run=run, checkpoint="final", config_id=c, shard=f"val-{s:06d}.tar", samples=100,
                    top1_correct=50 + c, top5_correct=90) for c in range(3) for s in range(2)]
    assert client.post("/api/evals", json=records, headers=AUTH).status_code == 200
    configs = [dict(config_id=c, name=f"cfg{c}", kind="anchor" if c != 1 else "stitch", gmacs=1.0 + c)
               for c in range(3)]
    assert client.put(f"/api/runs/{run}/configs", json=configs, headers=AUTH).status_code == 200
    latency = [dict(run=run, config_id=c, device="cpu", latency_ms=2.0 + c) for c in range(3)]
    assert client.put("/api/latency", json=latency, headers=AUTH).status_code == 200


def test_secrets_are_neither_stored_nor_served(service):
    client, store = service
    experiment = {
        "results": {"url": "http://head:8000/snnet-results", "token": TOKEN,
                    "db": "postgresql+psycopg://snnet:pg-pa55word@db.internal/results"},
        "data": {"root": "s3://bucket/imagenet?X-Amz-Signature=abc&token=query-t0ken"},
        "storage": {"aws_secret_access_key": "aws-k3y-value", "region": "eu-west-1"},
        "optim": {"lr": 1e-4},
    }
    run = {"run": "r", "experiment": experiment, "hyperparameters": {"lr": 1e-4, "api_key": "hyper-s3cret"}}
    assert client.post("/api/runs", json=run, headers=AUTH).status_code == 200
    _seed(client)

    # Nothing secret reached the database.
    with store.engine.connect() as conn:
        stored = json.dumps([dict(r) for r in conn.execute(select(store_module.runs_table)).mappings()])
    assert not [s for s in SECRETS if s in stored]
    assert "eu-west-1" in stored and "db.internal" in stored  # only the secrets went

    # Every read endpoint and page, without a token, serves none of them.
    spec = client.get("/openapi.json").json()
    params = {"checkpoint": "final", "a": "r", "b": "r", "max_gmacs": 5, "format": "csv"}
    bodies = []
    for path, item in spec["paths"].items():
        if "get" not in item:
            continue
        response = client.get(path.replace("{run}", "r").replace("{name}", "deit"), params=params)
        assert response.status_code == 200, (path, response.text[:200])
        bodies.append(response.text if "parquet" not in response.headers["content-type"] else "")
    for fmt in ("csv", "parquet"):
        bodies.append(client.get("/api/runs/r/export", params={"format": fmt}).content.decode("latin-1"))
    served = "\n".join(bodies)
    assert not [s for s in SECRETS if s in served]
    assert REDACTED in client.get("/api/runs/r").text

    # A row stored before redaction existed is redacted on the way out.
    with store._writer.begin() as conn:
        conn.execute(store_module.runs_table.update().values(experiment={"results": {"token": TOKEN}}))
    assert TOKEN not in client.get("/api/runs").text
    assert TOKEN not in client.get("/runs/r").text


def test_redact_covers_urls_keys_and_query_arguments():
    tree = {"db": "postgresql://u:pw@h/x", "Password": "p", "nested": [{"refresh_token": "t"}],
            "url": "https://h/x?sig=abc&keep=1", "token": None, "plain": "postgresql://u@h/x"}
    out = redact(tree)
    assert out == {"db": f"postgresql://u:{REDACTED}@h/x", "Password": REDACTED,
                   "nested": [{"refresh_token": REDACTED}], "url": f"https://h/x?sig={REDACTED}&keep=1",
                   "token": None, "plain": "postgresql://u@h/x"}


@pytest.mark.parametrize("text, expected", [
    ("postgresql://u:p/ss@h/db", f"postgresql://u:{REDACTED}@h/db"),  # `/` in the password
    ("postgresql://u:p@ss@h/db", f"postgresql://u:{REDACTED}@h/db"),  # userinfo ends at the last `@`
    ("mysql://u:a:b/c@d@h:3306/x?ssl=1", f"mysql://u:{REDACTED}@h:3306/x?ssl=1"),
    ("db a://u:p@h, b://v:q/r@i", f"db a://u:{REDACTED}@h, b://v:{REDACTED}@i"),  # two URLs, each its own
    ("host=h password=x user=u", f"host=h password={REDACTED} user=u"),  # libpq keyword form
    ("dbname=d password='a b' port=5432", f"dbname=d password={REDACTED} port=5432"),
    ("PGPASSWORD=hunter2 psql -h h", f"PGPASSWORD={REDACTED} psql -h h"),
    ("run --token=t0k --lr=0.1", f"run --token={REDACTED} --lr=0.1"),
    ("x?passphrase=1&db_pass=2&pgpass=3&api_key=4&secret_key=5&key=6&keep=7&layer_key=8",
     f"x?passphrase={REDACTED}&db_pass={REDACTED}&pgpass={REDACTED}&api_key={REDACTED}&secret_key={REDACTED}"
     f"&key={REDACTED}&keep=7&layer_key=8"),
    # What already worked, and what is no secret, is kept.
    ("postgresql://u@h/x", "postgresql://u@h/x"),
    ("http://head:8000/x?mail=a@b", "http://head:8000/x?mail=a@b"),
    ("lr=0.1 layers=12 bypass=1", "lr=0.1 layers=12 bypass=1"),
])
def test_redact_text_hides_passwords_with_slashes_ats_and_keyword_forms(text, expected):
    assert redact_text(text) == expected


def test_redact_hides_every_secret_sounding_key():
    secret = ["passphrase", "db_pass", "PGPASSWORD", "pgpass", "api_key", "secret_key", "key", "dbPass", "pass"]
    kept = ["bypass", "layer_key", "keys", "passes", "lr"]
    out = redact({k: "v" for k in secret + kept})
    assert [k for k in secret if out[k] != REDACTED] == [] and all(out[k] == "v" for k in kept)


@pytest.mark.parametrize("hostile", [
    "a" * 2**20 + "://",  # a scheme-looking run rescanned from each letter would be quadratic
    "a://b:" * (2**20 // 6),  # many URL heads, none with an `@`
    "a://u:" + "@" * 2**20,
    "?password='" * (2**20 // 11),  # quoted values that never close
    ("x" * 200 + "=") * (2**20 // 201),
    " a=" * (2**20 // 3),
])
def test_redact_is_linear_on_a_hostile_megabyte(hostile):
    # Completing at all is the check: a backtracking pattern would run for hours on these.
    out = redact({"note": hostile})["note"]
    assert isinstance(out, str) and out.count(REDACTED) <= len(hostile)


@pytest.mark.parametrize("record, message", [
    ({"samples": 2**62, "top1_correct": 0, "top5_correct": 0}, "less than or equal to 2147483647"),
    ({"samples": 2**63, "top1_correct": 0, "top5_correct": 0}, "less than or equal to 2147483647"),
    ({"time": 1e300}, "time: Input should be less than or equal to 4102444800"),
    ({"time": -1e18}, "time: Input should be greater than or equal to 0"),
    ({"config_id": True}, "config_id: must be an integer, not a boolean"),
    ({"loss_sum": "Infinity"}, "loss_sum"),
])
def test_values_that_broke_reads_are_refused(service, record, message):
    client, _ = service
    _seed(client)
    body = {"run": "r", "checkpoint": "final", "config_id": 0, "shard": "evil", "samples": 10,
            "top1_correct": 1, "top5_correct": 2, **record}
    text = json.dumps([body]).replace('"Infinity"', "Infinity")
    response = client.post("/api/evals", content=text, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["detail"], response.text
    for path in ("/", "/api/runs", "/runs/r", "/api/runs/r/table"):
        assert client.get(path).status_code == 200, path


def test_infinite_costs_and_timestamps_are_refused_with_the_field_named(service):
    client, _ = service
    raw = '[{"config_id": 0, "gmacs": Infinity}]'
    response = client.put("/api/runs/r/configs", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and "[0].gmacs" in response.json()["detail"]
    for created in (1e300, -1e18):
        response = client.post("/api/runs", json={"run": "r", "created": created}, headers=AUTH)
        assert response.status_code == 422 and "created" in response.json()["detail"]
    response = client.post("/api/runs", content='{"run": "r", "experiment": {"lr": NaN}}',
                           headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422 and "experiment.lr is nan" in response.json()["detail"]
    assert client.get("/").status_code == 200


def test_a_batch_that_would_overflow_a_sum_is_refused_whole(service, monkeypatch):
    client, store = service
    monkeypatch.setattr(store_module, "MAX_TOTAL_SAMPLES", 1000)  # the bound itself is 2**53
    ok = [dict(run="r", checkpoint="final", config_id=0, shard=f"s{i}", samples=400, top1_correct=1,
               top5_correct=1) for i in range(2)]
    assert client.post("/api/evals", json=ok, headers=AUTH).status_code == 200
    over = [dict(ok[0], shard="s2"), dict(ok[0], config_id=1, shard="s9")]
    response = client.post("/api/evals", json=over, headers=AUTH)
    assert response.status_code == 400 and "over the limit of 1000" in response.json()["detail"]
    assert store.table("r").row(0).samples == 800 and [r.config_id for r in store.table("r").rows] == [0]
    # Replacing a shard's record is not adding to the sum.
    assert client.post("/api/evals", json=[dict(ok[0], samples=600)], headers=AUTH).status_code == 200


def test_ticks_and_chart_terminate_for_any_finite_range():
    for lo, hi in [(5e18, 5.000000000000001e18), (0.0, 0.0), (-1e308, 1e308), (1e-300, 2e-300), (7.0, 7.0 + 1e-15)]:
        ticks = nice_ticks(lo, hi)
        assert 2 <= len(ticks) <= 24 and ticks == sorted(ticks)
    rows = [ConfigResult(config_id=i, gmacs=1e9 - i * 1e-7, top1=50.0 + i * 1e-12, samples=1) for i in range(3)]
    assert render_chart([Series("r", rows)]).startswith("<svg")
    # A tick step that overflows (hi - lo is inf) once raised OverflowError; any finite GMACs now draw.
    top = 1.7976931348623157e308
    for lo, hi, labels in [(-1e308, 1e308, ("-1e+308", "1e+308")), (0.0, 1.7e308, ("0", "1.7e+308")),
                           (-top, top, ("-1.8e+308", "1.8e+308")), (0.0, top, ("0", "1.8e+308"))]:
        rows = [ConfigResult(config_id=i, gmacs=g, top1=50.0 + i, samples=1) for i, g in enumerate((lo, hi))]
        svg = render_chart([Series("r", rows)])
        assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count('class="pt ') == 2
        assert "nan" not in svg and "inf" not in svg, (lo, hi)
        assert all(f'text-anchor="middle">{label}</text>' in svg for label in labels), (lo, hi)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 300, "x\n\x1b[2J", "-rf", ".hidden", "a b"])
def test_one_name_rule_on_every_path(service, bad):
    client, _ = service
    _seed(client)
    latency = [{"run": bad, "config_id": 0, "device": "cpu", "latency_ms": 1.0}]
    assert client.put("/api/latency", json=latency, headers=AUTH).status_code == 422
    assert client.put("/api/latency", json=[dict(latency[0], run="r", device=bad)], headers=AUTH).status_code == 422
    from urllib.parse import quote

    path = quote(bad, safe="")
    assert client.put(f"/api/runs/{path}/configs", json=[{"config_id": 0}], headers=AUTH).status_code in (404, 422)
    assert client.post("/api/runs", json={"run": bad}, headers=AUTH).status_code == 422
    assert client.get("/api/runs/r/table", params={"checkpoint": bad}).status_code == 422
    assert client.get("/api/compare", params={"a": "r", "b": bad}).status_code == 422
    assert bad not in client.get("/api/runs").text


def test_terminal_tables_show_no_control_characters(service):
    _, store = service
    store.register_run(RunInfo(run="r", hyperparameters={"note": "\x1b[2Jgone\nnext"}))
    text = format_runs(store.runs())
    assert "\x1b" not in text and "\\x1b[2Jgone\\nnext" in text


def test_body_limit_is_enforced_before_parsing(service):
    client, _ = service
    big = b"[" + b" " * MAX_BODY_BYTES + b"]"
    response = client.post("/api/evals", content=big, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(17):
            yield b" " * (1024 * 1024)

    response = client.post("/api/evals", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 413
    too_many = [{"config_id": i} for i in range(MAX_BATCH + 1)]
    response = client.put("/api/runs/r/configs", json=too_many, headers=AUTH)
    assert response.status_code == 422 and f"at most {MAX_BATCH}" in response.json()["detail"]


def test_openapi_documents_what_the_server_answers(service):
    client, _ = service
    spec = client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for code in ("400", "404", "413", "422"):
                assert op["responses"][code]["content"]["application/json"]["schema"] == error, (path, method, code)
            if method != "get":
                assert {"401", "403"} <= set(op["responses"]), (path, method)
    export = spec["paths"]["/api/runs/{run}/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"application/vnd.apache.parquet", "text/csv"}
    config_id = spec["components"]["schemas"]["EvalRecord"]["properties"]["config_id"]
    assert config_id["type"] == "integer" and config_id["maximum"] > 0
    response = client.post("/api/evals", json=[{"run": "r"}], headers=AUTH)
    assert isinstance(response.json()["detail"], str) and isinstance(response.json()["errors"], list)


def test_one_retry_helper():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    assert retry(flaky, on=ConnectionError, attempts=5, backoff=0) == "up" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionError):
        retry(flaky, on=ConnectionError, attempts=2, backoff=0)
    assert len(calls) == 2
    with pytest.raises(NotYet):
        retry(lambda: (_ for _ in ()).throw(NotYet()), timeout_s=0, backoff=0)
    with pytest.raises(KeyError):  # not covered by `on`: raised at once
        retry(lambda: {}["x"], on=ConnectionError, attempts=3, backoff=0)
    with pytest.raises(ValueError, match="never retries forever"):
        retry(flaky)


def test_store_refuses_directly_what_the_api_refuses(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    with pytest.raises(ValueError, match="not a valid name"):
        EvalRecord(run="r", checkpoint="../x", config_id=0, shard="s", samples=1, top1_correct=0, top5_correct=0)
    with pytest.raises(ValueError, match="gmacs"):
        ConfigInfo(config_id=0, gmacs=float("inf"))
    store.close()


def test_bounds_hold_on_both_backends(db_url):  # noqa: F811
    """The largest values the schema accepts fit both databases' columns; one past them is a 422."""
    from snnet_ray.results.schema import MAX_CONFIG_ID, MAX_COUNT, MAX_GMACS, MAX_PARAMS

    store = ResultsStore(db_url)
    with TestClient(create_app(store, token=TOKEN), raise_server_exceptions=False) as client:
        biggest = dict(run="r", checkpoint="final", config_id=MAX_CONFIG_ID, shard="s", samples=MAX_COUNT,
                       top1_correct=MAX_COUNT, top5_correct=MAX_COUNT, loss_sum=1e15, time=4_102_444_800.0)
        assert client.post("/api/evals", json=[biggest], headers=AUTH).status_code == 200
        config = dict(config_id=MAX_CONFIG_ID, gmacs=MAX_GMACS, params=MAX_PARAMS)
        assert client.put("/api/runs/r/configs", json=[config], headers=AUTH).status_code == 200
        for field, value in (("samples", MAX_COUNT + 1), ("config_id", 2**63), ("samples", -(2**63) - 1)):
            assert client.post("/api/evals", json=[{**biggest, field: value}], headers=AUTH).status_code == 422
        assert client.put("/api/runs/r/configs", json=[{**config, "params": 2**63}], headers=AUTH).status_code == 422
        row = client.get("/api/runs/r/table").json()["rows"][0]
        assert (row["samples"], row["params"], row["top1"]) == (MAX_COUNT, MAX_PARAMS, 100.0)
        for path in ("/", "/runs/r", "/api/runs"):
            assert client.get(path).status_code == 200
    store.close()
