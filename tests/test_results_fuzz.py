"""Property-based fuzz of the whole results API, driven by its own OpenAPI document.

For every operation the document lists, hypothesis draws path and query parameters and bodies
from the operation's schemas (valid values, values just outside their bounds, hostile names and
arbitrary JSON), with the right token, a wrong one or none. Every answer must be documented for
that operation, below 500, and its body must match the documented schema. Writes run first, so
the reads that follow read whatever the fuzzed writes managed to store.
"""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snnet_ray.names import NAME_PATTERN
from snnet_ray.results import EvalRecord, ResultsStore, create_app

TOKEN = "fuzz-token"
# Per operation (~20 of them): a few hundred requests in all, well under a CPU-minute.
WRITE_EXAMPLES, READ_EXAMPLES = 60, 15
HOSTILE_NAMES = ["../../etc/passwd", "a" * 300, "x\n\x1b[2J", "", " ", "-rf", ".hidden", "r;rm -rf /", "é", "%2e%2e"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("fuzz") / "results.db")
    app = create_app(store, token=TOKEN)
    store.ingest([EvalRecord(run="r", checkpoint="final", config_id=c, shard=f"s{s}", samples=10, top1_correct=c,
                             top5_correct=10) for c in range(3) for s in range(2)])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app.openapi()
    store.close()


def _operations() -> list[tuple[str, str]]:
    app = create_app(ResultsStore("sqlite://"))
    ops = [(m.upper(), p) for p, item in app.openapi()["paths"].items() for m in item]
    # Writes first: the reads then meet whatever the fuzzed writes stored.
    return sorted(ops, key=lambda op: (op[0] == "GET", op[1]))


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


def _names() -> st.SearchStrategy[str]:
    return st.sampled_from(["r", "final", "s0", "cpu"]) | st.from_regex(NAME_PATTERN, fullmatch=True) | st.sampled_from(
        HOSTILE_NAMES) | st.text(max_size=12)


def _from_schema(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """Values for a JSON schema: mostly valid ones, and some just outside it."""
    schema = _resolve(schema, spec)
    if depth > 4:
        return st.none()
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([_from_schema(s, spec, depth + 1) for s in schema.get("anyOf", schema.get("oneOf"))])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=6)
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return _names()
        return st.text(max_size=schema.get("maxLength", 30) + 2)
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        edges = [v for b in (lo, hi) if b is not None for v in (b - 1, b, b + 1)] + [2**63, -(2**63) - 1, True]
        return st.integers(min_value=lo, max_value=hi) | st.sampled_from(edges) | st.integers()
    if kind == "number":
        edges = [math.inf, -math.inf, math.nan, 1e300, -1e18, 5e18, 5.000000000000001e18, 0.0, -0.0]
        return st.floats(allow_nan=False, allow_infinity=False, min_value=schema.get("minimum"),
                         max_value=schema.get("maximum")) | st.sampled_from(edges) | st.floats()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = _from_schema(schema.get("items", {}), spec, depth + 1)
        return st.lists(items, max_size=4)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(st.text(max_size=8), _json, max_size=4) | st.fixed_dictionaries(
                {"results": st.fixed_dictionaries({"token": st.just("secret"),
                                                   "db": st.just("postgresql://u:pw@db/x")})})
        required = set(schema.get("required", ()))
        fields = {k: _from_schema(v, spec, depth + 1) for k, v in props.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    return _json


def _request(method: str, path: str, spec: dict) -> st.SearchStrategy[dict]:
    op = spec["paths"][path][method.lower()]
    params = op.get("parameters", [])
    path_params = {p["name"]: _names() for p in params if p["in"] == "path"}
    query = {p["name"]: _from_schema(p.get("schema", {}), spec) for p in params if p["in"] == "query"}
    required = {p["name"] for p in params if p["in"] == "query" and p.get("required")}
    body = st.none()
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        valid, anything = _from_schema(schema, spec), _json
        body = st.integers(0, 4).flatmap(lambda i: anything if i == 0 else valid)
    return st.fixed_dictionaries({
        "path": st.fixed_dictionaries(path_params),
        "query": st.fixed_dictionaries({k: v for k, v in query.items() if k in required},
                                       optional={k: v for k, v in query.items() if k not in required}),
        "body": body,
        "auth": st.sampled_from([TOKEN, TOKEN, TOKEN, None, "wrong"]),
    })


def _query_value(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


@pytest.mark.parametrize("method,path", _operations())
def test_fuzzed_requests_get_documented_answers(api, method, path):
    client, spec = api
    op = spec["paths"][path][method.lower()]

    examples = READ_EXAMPLES if method == "GET" else WRITE_EXAMPLES

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_request(method, path, spec))
    def check(req):
        url = path
        for name, value in req["path"].items():
            url = url.replace("{" + name + "}", _quote(value))
        headers = {"Authorization": f"Bearer {req['auth']}"} if req["auth"] else {}
        query = {k: _query_value(v) for k, v in req["query"].items() if v is not None}
        kwargs = {}
        if "requestBody" in op:
            kwargs["content"] = json.dumps(req["body"]).encode()
            headers["content-type"] = "application/json"
        response = client.request(method, url, params=query, headers=headers, **kwargs)
        status = response.status_code
        where = f"{method} {url} {query} -> {status}: {response.text[:300]}"
        assert status < 500, where
        if status == 404 and response.json().get("detail") == "Not Found":
            return  # the path parameter held a '/', so no route matched: Starlette's own 404
        documented = op["responses"].get(str(status))
        assert documented is not None, f"undocumented status: {where}"
        content = documented.get("content", {})
        mime = response.headers.get("content-type", "").split(";")[0]
        assert mime in content, f"undocumented content type {mime}: {where}"
        schema = content[mime].get("schema")
        if mime == "application/json" and schema:
            jsonschema.validate(response.json(), {**schema, "components": spec["components"]})

    check()


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="") or "%20"
