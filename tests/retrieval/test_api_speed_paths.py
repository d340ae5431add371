"""The HTTP serving's cheap paths keep the API's contract: the answer serialised without the response model is
what the model would serve, a well-formed search answered by the fast path equals the FastAPI route's, bad
requests still get the route's answers, the served-results log still records (its lines computed by its
writer), and the server options (access log, workers) are typed and checked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from engine_fixtures import make_corpus, unit, write_version
from fastapi.testclient import TestClient

from ebr import home, registry
from ebr.cli.serve import command as serve_command
from ebr.config import engine_defaults
from ebr.ranking.served_log import ServedLog
from ebr.retrieval.api import APP_ENV, SearchAnswer, answer_json, app_from_env, create_app, served_overrides
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchRequest, SearchService

TOKEN = "speed-token"
DATASET = "test"
HYBRID = "(and (term vertical:people) (nn unified :radius 0.6 :nprobe 8))"


@pytest.fixture
def served(ebr_home: Path, trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EBR_API_TOKEN", TOKEN)
    corpus = make_corpus(seed=43, n=200)
    version = write_version(home.versions_dir(DATASET) / "v0001", corpus, trained)
    registry.set_served_version(DATASET, "v0001")
    return version


def query(seed: int) -> list[float]:
    return unit(np.random.default_rng(seed).standard_normal(16)).tolist()


def model_json(answer: dict) -> dict:
    """What FastAPI would have served: the answer validated by its response model, unset fields left out."""
    return json.loads(SearchAnswer.model_validate(answer).model_dump_json(exclude_unset=True))


@pytest.mark.parametrize("explain", [False, True])
def test_the_serialised_answer_is_the_response_models(served: Path, explain: bool) -> None:
    service = SearchService.open(served, load_engine_config(), writable=False, dataset=DATASET)
    try:
        for seed in range(5):
            response = service.search(SearchRequest(expr=HYBRID, vector=query(seed), limit=7))
            answer = response.to_dict(explain=explain)
            shown = service.describe([r["doc_id"] for r in answer["results"]])
            answer["results"] = [r | d for r, d in zip(answer["results"], shown, strict=True)]
            assert json.loads(answer_json(answer)) == model_json(answer)
    finally:
        service.close()
    # no score (NaN) is null; numpy scalars are numbers; a key that is no field of the model is not served
    odd = {"version": "v1", "expr": "(term a:b)", "total": np.int64(2), "took_ms": 0.5, "stages": []}
    odd |= {"nn_skipped": False, "results": [{"doc_id": 3, "score": float("nan"), "title": None}]}
    odd["results"][0]["vertical"] = "people"
    assert json.loads(answer_json(odd | {"not_a_field": 1})) == model_json(odd | {"total": 2})


def test_fast_path_answers_as_the_route_and_bad_requests_as_before(served: Path) -> None:
    with TestClient(create_app(load_engine_config(), watch=False, dataset=DATASET)) as client:
        body = {"expr": HYBRID, "vector": query(1), "limit": 5, "explain": True}
        fast = client.post("/search", json=body)  # application/json: the fast path
        assert fast.status_code == 200 and fast.headers["content-type"] == "application/json"
        # the same body with a JSON media type the fast path does not take: answered by the route
        routed = client.post(
            "/search", content=json.dumps(body), headers={"Content-Type": "application/vnd.api+json"}
        )
        assert routed.status_code == 200
        drop = ("took_ms",)
        assert {k: v for k, v in fast.json().items() if k not in drop} == {
            k: v for k, v in routed.json().items() if k not in drop
        }
        assert fast.json() == model_json(fast.json()) and fast.json()["results"]
        # malformed bodies go on to the route: FastAPI's 422 (the inputs not echoed), JSON errors
        bad = client.post("/search", json={"expr": "(term a:b)", "limit": "5"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "limit"]
        assert "input" not in bad.json()["detail"][0]
        broken = client.post("/search", content=b'{"expr": ', headers={"Content-Type": "application/json"})
        assert broken.status_code == 422
        # errors of the search itself: the app's handlers' answers
        wrong = client.post("/search", json={"expr": "(and (term a:b)", "vector": query(2)})
        assert wrong.status_code == 400 and "position" in wrong.json()
        unknown = client.post("/search", json={"vertical": "nope", "query_text": "x"})
        assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]
        assert client.post("/search", json=body, headers={"Host": "evil.example"}).status_code == 400


def test_search_token_is_checked_on_the_fast_path(served: Path) -> None:
    config = load_engine_config(["engine.serving.auth_search=true"])
    body = {"expr": HYBRID, "vector": query(3)}
    with TestClient(create_app(config, watch=False, dataset=DATASET)) as client:
        refused = client.post("/search", json=body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.post("/search", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert (
            client.post("/search", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        )


def test_the_timeout_answers_504_on_the_fast_path(served: Path) -> None:
    config = load_engine_config(["engine.serving.request_timeout_s=0.000001"])
    with TestClient(create_app(config, watch=False, dataset=DATASET)) as client:
        answer = client.post("/search", json={"expr": HYBRID, "vector": query(4)})
    assert answer.status_code == 504 and "timed out" in answer.json()["detail"]


def test_served_lines_are_computed_by_the_writer_and_keep_the_version_open(
    served: Path, tmp_path: Path
) -> None:
    service = SearchService.open(served, load_engine_config(), writable=False, dataset=DATASET)
    log = ServedLog(replace(engine_defaults().serving.log_results, flush_records=1), tmp_path / "served")
    requests = [SearchRequest(expr=HYBRID, vector=query(seed), limit=10) for seed in range(4)]
    for request, response in zip(requests, service.search_many(requests), strict=True):
        log.record(service, request, response)
    service.retire()  # as a hot swap does: closed once the log's writer is done with its searches
    log.close()
    assert log.logged == 4 and log.dropped == 0 and 1 <= log.written <= 4
    lines = [
        json.loads(t)
        for p in sorted((tmp_path / "served").glob("*.jsonl"))
        for t in p.read_text().splitlines()
    ]
    assert len(lines) == log.written and all(line["expr"] == HYBRID for line in lines)
    assert service._inflight == 0


def test_server_options_are_checked(monkeypatch: pytest.MonkeyPatch, ebr_home: Path) -> None:
    config = load_engine_config()
    assert config.serving.workers == 1 and config.serving.access_log is False
    with pytest.raises(ValueError, match="engine.serving.workers"):
        load_engine_config(["engine.serving.workers=0"])
    assert served_overrides(["a=1"], 1) == ["a=1"]
    assert served_overrides(["a=1"], 3) == ["a=1", "engine.store.shared=true"]
    (ebr_home / "datasets" / DATASET).mkdir(parents=True)
    refused = CliRunner().invoke(serve_command, ["--dataset", DATASET, "--workers", "0"])
    assert refused.exit_code == 2 and "--workers" in refused.output
    monkeypatch.delenv(APP_ENV, raising=False)
    with pytest.raises(RuntimeError, match=APP_ENV):
        app_from_env()


def test_a_worker_builds_its_app_from_the_commands_options(
    served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"dataset": DATASET, "overrides": ["engine.results.default_limit=3"], "workers": 2}
    monkeypatch.setenv(APP_ENV, json.dumps(options))
    with TestClient(app_from_env()) as client:
        answer = client.post("/search", json={"expr": HYBRID, "vector": query(5)}).json()
        assert len(answer["results"]) == 3 and client.get("/healthz").json()["version"] == "v0001"
