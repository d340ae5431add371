"""The HTTP API as FastAPI users expect it: typed answers and documented errors in /openapi.json, `vertical`
an enum of the served version's verticals, results that carry their title and vertical, /docs and /redoc
served without a CDN."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from engine_fixtures import make_corpus, unit, write_version
from fastapi.testclient import TestClient

from ebr import home, registry
from ebr.retrieval.api import create_app
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import HotSwapper

TOKEN = "schema-token"
DATASET = "test"
TEMPLATE = "(and (term vertical:{v}) (or $text (nn unified :radius 0.6 :nprobe 16)))"


def manifest(verticals: list[str]) -> dict:
    return {
        "retrievers": {"unified": {"name": "unified", "kind": "single", "keys": ["unified"]}},
        "serving": {
            "default_vertical": verticals[0],
            "verticals": {
                v: {"retriever": "unified", "key": "unified", "expr": TEMPLATE.format(v=v)} for v in verticals
            },
        },
    }


@pytest.fixture
def served(ebr_home: Path, trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EBR_API_TOKEN", TOKEN)
    corpus = make_corpus(seed=41, n=200)
    titles = [f"Document {i}: {' '.join(t[2:])}" for i, t in enumerate(corpus.terms)]
    version = write_version(
        home.versions_dir(DATASET) / "v0001", corpus, trained, manifest(["people", "groups"]), titles
    )
    registry.set_served_version(DATASET, "v0001")
    return version


@pytest.fixture
def client(served: Path):
    with TestClient(create_app(load_engine_config(), watch=False, dataset=DATASET)) as c:
        yield c


def query(seed: int) -> list[float]:
    return unit(np.random.default_rng(seed).standard_normal(16)).tolist()


# what each route may answer besides success, by (method, path)
ERRORS = {
    ("get", "/healthz"): set(),
    ("post", "/search"): {"400", "401", "413", "422", "503", "504"},
    ("get", "/documents/{doc_id}"): {"404", "422", "503"},
    ("post", "/documents"): {"400", "401", "403", "409", "413", "415", "422", "503"},
    ("put", "/documents/{doc_id}"): {"400", "401", "403", "404", "413", "415", "422", "503"},
    ("delete", "/documents/{doc_id}"): {"401", "403", "404", "422", "503"},
    ("post", "/documents/batch"): {"400", "401", "403", "404", "409", "413", "415", "422", "503"},
    ("post", "/admin/compact"): {"401", "403", "503"},
}


def test_every_route_has_a_response_model_documented_errors_and_a_tag(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    routes = {(m, p): op for p, ops in schema["paths"].items() for m, op in ops.items()}
    assert set(routes) == set(ERRORS)
    models = schema["components"]["schemas"]
    for (method, path), op in routes.items():
        success = next(code for code in op["responses"] if code.startswith("2"))
        ref = op["responses"][success]["content"]["application/json"]["schema"]["$ref"]
        assert models[ref.rsplit("/", 1)[1]]["properties"], (method, path)  # a model, not `{}`
        errors = {code for code in op["responses"] if not code.startswith("2")}
        assert errors == ERRORS[method, path], (method, path)
        for code in errors:
            body = op["responses"][code]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
            assert op["responses"][code]["description"], (method, path, code)
        assert op["tags"] and op["summary"], (method, path)
    assert set(models["SearchResult"]["properties"]) == {"doc_id", "score", "title", "vertical"}
    assert models["SearchBody"]["examples"] and models["SearchAnswer"]["examples"]


def test_vertical_is_an_enum_of_the_served_versions_verticals(served: Path, trained) -> None:
    swapper = HotSwapper(load_engine_config(), DATASET)
    with TestClient(create_app(load_engine_config(), swapper=swapper, watch=False)) as client:
        schema = client.get("/openapi.json").json()
        assert schema["components"]["schemas"]["Vertical"]["enum"] == ["groups", "people"]
        for model in ("SearchBody", "SearchResult"):
            vertical = schema["components"]["schemas"][model]["properties"]["vertical"]
            assert {"$ref": "#/components/schemas/Vertical"} in vertical["anyOf"]
        write_version(
            home.versions_dir(DATASET) / "v0002", make_corpus(seed=42, n=50), trained, manifest(["people"])
        )
        registry.set_served_version(DATASET, "v0002")
        assert swapper.check()  # hot reload: the next schema has the new version's verticals
        assert client.get("/openapi.json").json()["components"]["schemas"]["Vertical"]["enum"] == ["people"]
        refused = client.post("/search", json={"vertical": "groups", "query_text": "w1", "vector": query(1)})
        assert refused.status_code == 400
        assert (
            refused.json()["detail"] == "vertical 'groups' is not one of version v0002's verticals (people)"
        )


def test_results_carry_their_title_and_vertical(client: TestClient, served: Path) -> None:
    documents = pq.read_table(served / "documents.parquet").to_pandas().set_index("doc_id")
    for vertical in ("people", "groups"):
        answer = client.post(
            "/search", json={"vertical": vertical, "query_text": "w1 w2", "vector": query(2)}
        )
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert results and {r["vertical"] for r in results} == {vertical}
        for r in results:
            assert r["title"] == documents.loc[r["doc_id"], "title"]
            assert re.fullmatch(r"Document \d+: .+", r["title"])
    added = {"doc_id": -7, "terms": ["vertical:groups", "text:fresh"]}  # in realtime: no title
    assert (
        client.post("/documents", json=added, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
    )
    fresh = client.post("/search", json={"expr": "(term text:fresh)"}).json()["results"]
    assert fresh == [{"doc_id": -7, "score": None, "title": None, "vertical": "groups"}]
    explained = client.post("/search", json={"expr": "(term vertical:groups)", "limit": 3, "explain": True})
    assert explained.json()["nn"] == [] and explained.json()["ranking"] == []
    plain = client.post("/search", json={"expr": "(term vertical:groups)", "limit": 3}).json()
    assert "nn" not in plain and "ranking" not in plain  # explain's fields only when asked


def test_an_unknown_vertical_is_refused_with_the_versions_verticals(client: TestClient) -> None:
    for body in ({"vertical": "jobs", "query_text": "w1"}, {"vertical": "jobs", "expr": "(term text:w1)"}):
        refused = client.post("/search", json=body)
        assert refused.status_code == 400
        assert (
            refused.json()["detail"]
            == "vertical 'jobs' is not one of version v0001's verticals (groups, people)"
        )


def test_docs_pages_load_their_assets_from_the_server(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        hosts = set(re.findall(r"https?://([^/\"'\s]+)", html))
        assert hosts <= {"testserver"}, f"{page} loads from {hosts}"
        assets = re.findall(r"(?:src|href)=\"(/[^\"]+\.(?:js|css))\"", html)
        assert assets, page
        for asset in assets:
            answer = client.get(asset)
            assert answer.status_code == 200 and len(answer.content) > 10_000, asset
