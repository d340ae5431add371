"""Serving a published version: `ebr search`, the HTTP API, query towers, hot reload under load, errors."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from engine_fixtures import clustered, make_corpus, unit, write_version
from fastapi.testclient import TestClient
from faults import inject
from hydra.errors import HydraException

from ebr import home, registry
from ebr.cli.search import command as search_command
from ebr.config import engine_defaults
from ebr.retrieval.api import create_app
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.executor import execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.query import expand_text, parse
from ebr.retrieval.service import HotSwapper, SearchRequest, SearchService

TOKEN = "test-token"
DATASET = "test"  # the dataset these tests serve


@pytest.fixture(autouse=True)
def _api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBR_API_TOKEN", TOKEN)


def api_client(app, **kwargs) -> TestClient:
    """A test client sending the API token (writes need it)."""
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)


Q = clustered(np.random.default_rng(77), 1)[0]
HYBRID = "(and (term location:seattle) (nn unified :radius 0.6 :nprobe 8))"
PEOPLE = "(and (term vertical:people) (or $text (nn unified :radius 0.24 :nprobe 16)))"
RETRIEVER = {
    "retrievers": {"unified": {"name": "unified", "kind": "single", "keys": ["unified"]}},
    "serving": {
        "default_vertical": "people",
        "verticals": {"people": {"retriever": "unified", "key": "unified", "expr": PEOPLE}},
    },
}


@pytest.fixture
def served(ebr_home: Path, trained) -> Path:
    version = write_version(
        home.versions_dir(DATASET) / "v0001", make_corpus(seed=31, n=300), trained, RETRIEVER
    )
    registry.set_served_version(DATASET, "v0001")
    return version


class FakeEncoder:
    """Stands in for ebr.models.export's encoder: a deterministic unit vector from the query text and user."""

    def __init__(self, d: int):
        self.d = d

    def encode(self, queries: list) -> np.ndarray:
        rows = []
        for q in queries:
            seed = int.from_bytes(
                hashlib.blake2b(f"{q.query_text}|{q.user_id}".encode(), digest_size=4).digest()
            )
            rows.append(unit(np.random.default_rng(seed).standard_normal(self.d)))
        return np.stack(rows)


def test_ebr_search_prints_json_results_of_the_served_version(served: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        search_command,
        ["--dataset", DATASET, "--expr", HYBRID, "--vector", json.dumps(Q.tolist()), "--k", "5", "--json"],
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    expected = execute(EngineIndex.load(served / "engine"), parse(HYBRID), {"unified": Q}, limit=5)
    assert got == expected.as_dicts() and got
    assert all(set(r) == {"doc_id", "score"} for r in got)
    np.save(served.parent.parent / "q.npy", Q)
    from_file = runner.invoke(
        search_command,
        [
            "--dataset",
            DATASET,
            "--expr",
            HYBRID,
            "--vector-file",
            str(served.parent.parent / "q.npy"),
            "--json",
        ],
    )
    assert json.loads(from_file.output)[:5] == got
    table = runner.invoke(
        search_command,
        ["--dataset", DATASET, "--expr", HYBRID, "--vector", json.dumps(Q.tolist()), "--k", "3"],
    )
    assert table.exit_code == 0 and "matches" in table.output and len(table.output.splitlines()) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expr", "(and (term a:b)"], "column 16: unexpected end of query"),
        (["--expr", "(nn unified :k 3)"], "needs a query embedding"),
        (["--expr", "(nn other :k 3)"], "unknown embedding key 'other'"),
        (["--expr", "(nn unified :k 3)", "--vector", "[1, 2]"], "2 dimensions, the index has 16"),
        (["--expr", "(nn unified :k 3)", "--vector", "{oops"], "not JSON"),
        (["--expr", "(term a:b)", "--k", "0"], "limit must be between 1 and"),
        (["--expr", "(term a:b)", "engine.limits.nope=1"], "OVERRIDES"),
        (["--vertical", "pages", "--query-text", "x"], "vertical 'pages' has no expression in version v0001"),
    ],
)
def test_ebr_search_errors_are_one_clear_line(served: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(search_command, ["--dataset", DATASET, *args])
    assert result.exit_code != 0
    assert message in result.output.strip().splitlines()[-1], result.output  # click's usage lines come first


def test_ebr_search_without_a_served_version(ebr_home: Path) -> None:
    home.dataset_dir(DATASET).mkdir(parents=True)  # a dataset that has published nothing yet
    result = CliRunner().invoke(search_command, ["--dataset", DATASET, "--expr", "(term a:b)", "--json"])
    assert result.exit_code != 0 and "no version is served" in result.output


def test_query_text_and_searcher_go_through_the_query_tower(served: Path, monkeypatch) -> None:
    import ebr.models.export

    (served / "towers" / "unified").mkdir(parents=True)  # towers are loaded from the version folder
    loaded: list[Path] = []

    def fake_loader(path: Path) -> FakeEncoder:
        loaded.append(path)
        return FakeEncoder(16)

    monkeypatch.setattr(ebr.models.export, "load_query_encoder", fake_loader)
    config = load_engine_config()
    service = SearchService.open(served, config, writable=False, verify=False, dataset=DATASET)
    request = SearchRequest(vertical="people", query_text="w1 w2", searcher_id=42)
    response = service.search(request)
    expected_vector = FakeEncoder(16).encode([ebr.models.export.QueryInput("w1 w2", 42)])[0]
    root = parse(
        "(and (term vertical:people) (or (and (term text:w1) (term text:w2)) "
        "(nn unified :radius 0.24 :nprobe 16)))"
    )
    assert response.expr == str(root)
    expected = execute(service.engine.index, root, {"unified": expected_vector}, limit=config.default_limit)
    assert response.hits.doc_ids.tolist() == expected.doc_ids.tolist() and response.hits.total > 0
    service.search(request)
    assert loaded == [served / "towers" / "unified"]  # loaded once, then reused
    cli = CliRunner().invoke(
        search_command,
        ["--dataset", DATASET, "--vertical", "people", "--query-text", "w1 w2", "--searcher", "42", "--json"],
    )
    assert json.loads(cli.output) == response.hits.as_dicts()


@pytest.fixture
def client(served: Path):
    app = create_app(load_engine_config(), watch=False, dataset=DATASET)
    with api_client(app) as c:
        yield c


def search(client: TestClient, **body) -> dict:
    response = client.post("/search", json={"vector": Q.tolist(), **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_http_search_updates_and_errors(client: TestClient) -> None:
    assert client.get("/healthz").json()["version"] == "v0001"
    body = search(client, expr=HYBRID, limit=3, explain=True)
    assert body["version"] == "v0001" and len(body["results"]) <= 3 and body["nn"][0]["key"] == "unified"
    new = {"doc_id": 5, "terms": ["location:seattle", "text:fresh"], "embeddings": {"unified": Q.tolist()}}
    assert client.post("/documents", json=new).status_code == 201
    top = search(client, expr=HYBRID)["results"][0]
    assert top["doc_id"] == 5 and top["score"] > 0.9  # visible to the next query
    assert client.post("/documents", json=new).status_code == 409
    assert client.get("/documents/5").json()["terms"] == ["location:seattle", "text:fresh"]
    assert client.put("/documents/5", json={"terms": ["location:paris"]}).status_code == 200
    assert 5 not in [r["doc_id"] for r in search(client, expr=HYBRID)["results"]]
    assert client.delete("/documents/5").status_code == 200
    assert client.get("/documents/5").status_code == 404
    batch = {"changes": [{"op": "add", "doc_id": 6, "terms": ["text:fresh"]}, {"op": "delete", "doc_id": 6}]}
    assert client.post("/documents/batch", json=batch).json()["applied"] == 2
    assert client.post("/admin/compact").json()["generation"] == 1

    bad = client.post(
        "/search", json={"expr": "(and (term a:b) (nn unified :radius 5))", "vector": Q.tolist()}
    )
    assert (
        bad.status_code == 400 and bad.json()["position"] == 36 and "between 0 and 2" in bad.json()["detail"]
    )
    assert client.post("/search", json={"expr": "(nn unified :k 3)", "vector": [1, 2]}).status_code == 400
    assert client.post("/search", json={"expr": "(term a:b)", "limit": 0}).status_code == 422
    assert client.post("/search", json={"expr": "(term a:b)", "bogus": 1}).status_code == 422
    assert client.post("/search", json={"expr": 5}).status_code == 422
    assert client.post("/search", json={"expr": "(term a:b)", "limit": 10**6}).status_code == 400
    assert client.post("/search", content=b"{not json").status_code == 422
    huge = client.post("/search", json={"expr": "(nn unified :k 3)", "vector": [0.1] * 5000})
    assert huge.status_code == 422
    assert client.post("/documents", json={"doc_id": 9, "terms": ["nocolon"]}).status_code == 400
    assert client.get(f"/documents/{2**70}").status_code == 422
    assert client.post("/search", json={"expr": "(term a:b)", "searcher_id": 2**70}).status_code == 422
    per_key = client.post(
        "/search", json={"expr": HYBRID, "vector": {"unified": Q.tolist()}, "order": "doc_id"}
    )
    assert per_key.status_code == 200
    ids = [r["doc_id"] for r in per_key.json()["results"]]
    assert ids == sorted(ids) and set(ids) == {r["doc_id"] for r in search(client, expr=HYBRID)["results"]}
    assert client.put("/documents/12345", json={"terms": []}).status_code == 404


def test_http_search_with_ranking_operators(client: TestClient, served: Path) -> None:
    expr = "(rerank unified :n 5 (fuse :rrf 60 (or $anytext (nn unified :k 20 :nprobe 8))))"
    body = search(client, expr=expr, query_text="w1 w2", explain=True)
    expected = execute(
        EngineIndex.load(served / "engine"),
        expand_text(parse(expr), "w1 w2"),
        {"unified": Q},
        limit=100,
        query_text="w1 w2",
    )
    assert [{"doc_id": r["doc_id"], "score": r["score"]} for r in body["results"]] == expected.as_dicts()
    assert body["total"] == 5
    assert [(r["operator"], r["method"], r["kept"]) for r in body["ranking"]] == [
        ("fuse", "rrf", expected.ranking[0].kept),
        ("rerank", "unified", 5),
    ]
    no_vector = client.post("/search", json={"expr": "(rerank unified :n 5 (term vertical:people))"})
    assert no_vector.status_code == 400 and "'unified' needs a query embedding" in no_vector.json()["detail"]
    misplaced = client.post("/search", json={"expr": "(and (fuse :rrf 1 $text))", "query_text": "w1"})
    assert misplaced.status_code == 400 and misplaced.json()["position"] == 5


def test_http_documents_with_term_payloads(client: TestClient) -> None:
    pairs = {"doc_id": 5, "terms": ["vertical:people", ["quality:static", 0.75]]}
    mapping = {"doc_id": 6, "terms": {"vertical:people": None, "quality:static": 0.25}}
    assert client.post("/documents", json=pairs).status_code == 201
    assert client.post("/documents/batch", json={"changes": [{"op": "add", **mapping}]}).status_code == 200
    assert client.get("/documents/5").json()["payloads"] == {"quality:static": 0.75}
    body = search(client, expr="(term quality:static :min 0.2 :score)")
    added = {"title": None, "vertical": "people"}  # realtime additions have no title
    assert body["results"] == [{"doc_id": 5, "score": 0.75, **added}, {"doc_id": 6, "score": 0.25, **added}]
    assert client.put("/documents/6", json={"terms": [["quality:static", 0.9]]}).status_code == 200
    updated = search(client, expr="(term quality:static :min 0.8)")["results"]
    assert updated == [{"doc_id": 6, "score": None, "title": None, "vertical": None}]  # no vertical: term
    bad = client.post("/documents", json={"doc_id": 7, "terms": [["text:a", 1e39]]})
    assert bad.status_code == 400 and "finite float32" in bad.json()["detail"]
    assert client.post("/documents", json={"doc_id": 7, "terms": [["text:a", "x"]]}).status_code == 422
    error = client.post("/search", json={"expr": "(term a:b :min 2 :max 1)"}).json()
    assert error["position"] == 22 and ":max 1.0 is below :min 2.0" in error["detail"]


def test_a_second_server_on_the_same_home_serves_read_only(served: Path) -> None:
    config = load_engine_config()
    with (
        api_client(create_app(config, watch=False, dataset=DATASET)) as first,
        api_client(create_app(config, watch=False, dataset=DATASET)) as second,
    ):
        assert second.post("/search", json={"expr": HYBRID, "vector": Q.tolist()}).status_code == 200
        refused = second.post("/documents", json={"doc_id": 5, "terms": ["text:x"]})
        assert refused.status_code == 503 and "read-only" in refused.json()["detail"]
        assert first.post("/documents", json={"doc_id": 5, "terms": ["text:x"]}).status_code == 201
        health = second.get("/healthz").json()
        assert (
            health["status"] == "read_only" and "LOCK is held by another engine" in health["read_only_reason"]
        )
        assert first.get("/healthz").json()["status"] == "ok"


def test_timeouts_answer_504(served: Path) -> None:
    config = load_engine_config(["engine.serving.request_timeout_s=0.000001"])
    with api_client(create_app(config, watch=False, dataset=DATASET)) as c:
        response = c.post("/search", json={"expr": HYBRID, "vector": Q.tolist()})
    assert response.status_code == 504 and "timed out" in response.json()["detail"]


def test_no_served_version_answers_503(ebr_home: Path) -> None:
    with api_client(create_app(load_engine_config(), watch=False, dataset=DATASET)) as c:
        assert c.get("/healthz").json()["status"] == "no_version"
        assert c.post("/search", json={"expr": "(term a:b)"}).status_code == 503


def test_hot_reload_swaps_versions_without_failing_requests(served: Path, ebr_home: Path, trained) -> None:
    config = load_engine_config()
    swapper = HotSwapper(config, DATASET)
    app = create_app(config, swapper=swapper, watch=False)
    versions_seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            response = client.post("/search", json={"expr": HYBRID, "vector": Q.tolist(), "limit": 5})
            if response.status_code != 200:
                failures.append(response.text)
            else:
                versions_seen.append(response.json()["version"])

    with api_client(app) as client:
        old = swapper._service
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(4)]
        for t in threads:
            t.start()
        write_version(home.versions_dir(DATASET) / "v0002", make_corpus(seed=32, n=300), trained, RETRIEVER)
        registry.set_served_version(DATASET, "v0002")
        assert swapper.check()
        deadline = time.monotonic() + 60
        while versions_seen.count("v0002") < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert not failures
        assert "v0001" in versions_seen and versions_seen[-1] == "v0002"
        assert old is not None and not old.engine.writable  # the old version was closed once idle
        # a corrupt new version is refused: the current one stays served and /healthz says why
        write_version(home.versions_dir(DATASET) / "v0003", make_corpus(seed=33, n=50), trained, RETRIEVER)
        (home.versions_dir(DATASET) / "v0003" / "doc_ids.npy").write_bytes(b"corrupt")
        registry.set_served_version(DATASET, "v0003")
        assert not swapper.check() and swapper.version == "v0002"
        assert "doc_ids.npy: checksum mismatch" in client.get("/healthz").json()["last_error"]
        assert client.post("/search", json={"expr": HYBRID, "vector": Q.tolist()}).status_code == 200


def test_rollback_while_a_request_is_in_flight_keeps_the_server_writable(
    served: Path, ebr_home: Path, trained
) -> None:
    config = load_engine_config()
    swapper = HotSwapper(config, DATASET)
    write_version(home.versions_dir(DATASET) / "v0002", make_corpus(seed=32, n=100), trained, RETRIEVER)
    with api_client(create_app(config, swapper=swapper, watch=False)) as client:
        assert client.post("/documents", json={"doc_id": 5, "terms": ["text:x"]}).status_code == 201
        with swapper.service() as slow:  # a slow search on v0001 while it is rolled back and forth
            for version in ("v0002", "v0001"):
                registry.set_served_version(DATASET, version)
                assert swapper.check()
            health = client.get("/healthz").json()
            assert (
                health["status"] == "read_only"
                and "LOCK is held by another engine" in health["read_only_reason"]
            )
            assert client.post("/documents", json={"doc_id": 6, "terms": ["text:x"]}).status_code == 503
            assert slow.engine.writable  # the retired v0001 still holds the lock
        assert not slow.engine.writable  # its last request ended: closed, the lock released
        assert not swapper.check() and client.get("/healthz").json()["status"] == "ok"  # took the lock
        assert client.post("/documents", json={"doc_id": 6, "terms": ["text:x"]}).status_code == 201
        assert client.get("/documents/5").status_code == 200
        # without the swapper's check, the first write takes the lock
        with swapper.service() as slow:
            for version in ("v0002", "v0001"):
                registry.set_served_version(DATASET, version)
                assert swapper.check()
        assert client.post("/documents", json={"doc_id": 7, "terms": ["text:x"]}).status_code == 201
        assert {client.get(f"/documents/{d}").status_code for d in (5, 6, 7)} == {200}
        assert client.get("/healthz").json() == {
            "status": "ok",
            "version": "v0001",
            "read_only_reason": None,
            "last_error": None,
        }


def test_a_failed_write_answers_500_and_a_broken_log_shows_in_healthz(served: Path) -> None:
    new = {"doc_id": 5, "terms": ["text:fresh"]}
    with api_client(
        create_app(load_engine_config(), watch=False, dataset=DATASET), raise_server_exceptions=False
    ) as client:
        with inject(1, kinds={"write"}) as faults:
            assert client.post("/documents", json=new).status_code == 500
        assert faults.failed is not None and faults.failed[0] == "write"  # the append to the log
        assert client.get("/documents/5").status_code == 404
        assert client.post("/documents", json=new).status_code == 201  # the retry
        with inject(1, kinds={"write", "truncate"}, sticky=True):
            refused = client.post("/documents", json={"doc_id": 6, "terms": ["text:fresh"]})
        assert refused.status_code == 503 and "may or may not be logged" in refused.json()["detail"]
        health = client.get("/healthz").json()
        assert health["status"] == "read_only" and "cutting a failed append" in health["read_only_reason"]
    with api_client(create_app(load_engine_config(), watch=False, dataset=DATASET)) as client:  # a restart
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/documents/5").status_code == 200 and client.get("/documents/6").status_code == 404


def test_engine_settings_are_typed_at_composition_and_bad_ranges_are_named() -> None:
    config = load_engine_config()
    assert (
        config.planner == engine_defaults().planner and config.default_limit == config.results.default_limit
    )
    with pytest.raises(HydraException, match="engine.limits.max_k=abc"):
        load_engine_config(["engine.limits.max_k=abc"])  # a wrong type never reaches the first query
    with pytest.raises(ValueError, match="engine.bm25.k1 must be at least 0, got -1"):
        load_engine_config(["engine.bm25.k1=-1"])
    with pytest.raises(ValueError, match="engine.bm25.b must be between 0 and 1, got 1.5"):
        load_engine_config(["engine.bm25.b=1.5"])
    with pytest.raises(ValueError, match="max_depth"):
        load_engine_config(["engine.limits.max_depth=500"])
    with pytest.raises(ValueError, match="order"):
        load_engine_config(["engine.results.order=random"])
    with pytest.raises(HydraException, match="engine.limits.nope"):
        load_engine_config(["engine.limits.nope=1"])
