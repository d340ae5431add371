"""The HTTP API's authentication, browser safety and strict input types (before any version is served)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebr.retrieval.api import create_app
from ebr.retrieval.config import load_engine_config

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOC = {"doc_id": 1, "terms": ["text:a"]}
DATASET = "test"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, tmp_path) -> TestClient:
    monkeypatch.setenv("EBR_HOME", str(tmp_path))
    monkeypatch.setenv("EBR_API_TOKEN", TOKEN)
    with TestClient(create_app(load_engine_config(), watch=False, dataset=DATASET)) as c:
        yield c


def test_writes_and_admin_need_the_token(client: TestClient) -> None:
    for method, url, body in [
        ("POST", "/documents", DOC),
        ("PUT", "/documents/1", {"terms": []}),
        ("DELETE", "/documents/1", None),
        ("POST", "/documents/batch", {"changes": []}),
        ("POST", "/admin/compact", None),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            answer = client.request(method, url, json=body, headers=headers)
            assert answer.status_code == 401, (method, url, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
    # with the token the request gets past authentication (nothing is served: 503)
    assert client.post("/documents", json=DOC, headers=AUTH).status_code == 503
    assert client.post("/search", json={"expr": "(term a:b)"}).status_code == 503  # search: optional


def test_search_token_when_configured(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("EBR_HOME", str(tmp_path))
    monkeypatch.delenv("EBR_API_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    overrides = [f"engine.serving.token_file={token_file}", "engine.serving.auth_search=true"]
    config = load_engine_config(overrides)
    with TestClient(create_app(config, watch=False, dataset=DATASET)) as c:
        assert c.post("/search", json={"expr": "(term a:b)"}).status_code == 401
        assert c.post("/search", json={"expr": "(term a:b)"}, headers=AUTH).status_code == 503


def test_no_token_means_read_only(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("EBR_HOME", str(tmp_path))
    monkeypatch.delenv("EBR_API_TOKEN", raising=False)
    with TestClient(create_app(load_engine_config(), watch=False, dataset=DATASET)) as c:
        refused = c.post("/documents", json=DOC)
        assert refused.status_code == 403 and "EBR_API_TOKEN" in refused.json()["detail"]
    open_writes = load_engine_config(["engine.serving.allow_unauthenticated_writes=true"])
    with TestClient(create_app(open_writes, watch=False, dataset=DATASET)) as c:
        assert c.post("/documents", json=DOC).status_code == 503  # past auth; nothing served
    with pytest.raises(ValueError, match="token_file"):
        create_app(
            load_engine_config([f"engine.serving.token_file={tmp_path / 'missing'}"]),
            watch=False,
            dataset=DATASET,
        )


def test_cross_site_posts_and_foreign_hosts_are_refused(client: TestClient) -> None:
    text_plain = {**AUTH, "Content-Type": "text/plain"}
    assert client.post("/documents", content=b'{"doc_id": 1}', headers=text_plain).status_code == 415
    form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    assert client.post("/documents/batch", content=b"changes=1", headers=form).status_code == 415
    rebound = client.post("/documents", json=DOC, headers={**AUTH, "Host": "evil.example"})
    assert rebound.status_code == 400
    assert client.get("/healthz", headers={"Host": "localhost:8080"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "[::1]:8080"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "[::2]:8080"}).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"doc_id": True, "terms": ["text:a"]},
        {"doc_id": "1", "terms": ["text:a"]},
        {"doc_id": 1.0, "terms": ["text:a"]},
        {"doc_id": 2**63, "terms": ["text:a"]},
        {"doc_id": 1, "terms": [["text:a", "0.5"]]},
        {"doc_id": 1, "terms": [["text:a", True]]},
        {"doc_id": 1, "embeddings": {"k": [3e38, 3e38]}},
        {"doc_id": 1, "embeddings": {"k": [1e39]}},
        {"doc_id": 1, "embeddings": {"k": [0.0, 0.0]}},
        {"doc_id": 1, "embeddings": {"k": [1e-50]}},
        {"doc_id": 1, "embeddings": {"k": ["1.0"]}},
    ],
)
def test_documents_are_strictly_typed(client: TestClient, body: dict) -> None:
    answer = client.post("/documents", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    "body",
    [
        {"expr": "(term a:b)", "limit": "5"},
        {"expr": "(term a:b)", "limit": True},
        {"expr": "(term a:b)", "searcher_id": "7"},
        {"expr": "(term a:b)", "explain": "yes"},
        {"expr": "(nn k :k 3)", "vector": [3e38, 3e38]},
        {"expr": "(nn k :k 3)", "vector": {"k": [0.0]}},
    ],
)
def test_searches_are_strictly_typed(client: TestClient, body: dict) -> None:
    assert client.post("/search", json=body).status_code == 422


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["doc_id", "terms", "embeddings", "op", "changes", "expr", "vector", "limit", "searcher_id"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    url=st.sampled_from(["/documents", "/documents/batch", "/search"]),
    body=JSON | st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5),
)
def test_hostile_bodies_never_crash(client: TestClient, url: str, body: object) -> None:
    content = json.dumps(body).encode()  # NaN and Infinity included (not JSON: 422)
    answer = client.post(url, content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code in (400, 404, 409, 413, 422, 503), (answer.status_code, answer.text)
