"""The ranker (ebr/ranking/ranker.py): lambdarank learns a known ordering; a version carrying a ranker
stage verifies, serves ranked results through SearchService and the HTTP API, rolls back like any other,
and fails verification when its model file is changed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ranking_pieces import DATASET, TinyWorld, requests, stage

from ebr import home, registry
from ebr.config import load_config, typed
from ebr.ranking.features import RankingContext
from ebr.ranking.ranker import STAGES_OFF, load_ranker, retrieve, train_booster, with_clicks
from ebr.registry import catalogue, publication
from ebr.retrieval.api import create_app
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import HotSwapper, SearchService
from ebr.steps.ranker import STAGE, fit

GATE = {"passed": True, "reason": "test", "checks": []}


def test_lambdarank_learns_a_known_ordering() -> None:
    rng = np.random.default_rng(0)

    def groups(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = rng.random((n * 10, 3)).astype(np.float32)  # column 0 decides, the others are noise
        labels = np.concatenate([np.argsort(np.argsort(g)) for g in x[:, 0].reshape(n, 10)])  # grades 0..9
        return x, labels.astype(np.float64), np.full(n, 10, dtype=np.int64)

    booster = train_booster(groups(200), groups(50), ["a", "b", "c"], {"num_leaves": 7}, 100, 10, 1, 1)
    x, _, _ = groups(20)
    predicted = booster.predict(x).reshape(20, 10)
    same_top, correlations = 0, []
    for truth, score in zip(x[:, 0].reshape(20, 10), predicted, strict=True):
        same_top += int(np.argmax(truth) == np.argmax(score))
        correlations.append(np.corrcoef(np.argsort(np.argsort(truth)), np.argsort(np.argsort(score)))[0, 1])
    assert same_top >= 18 and np.mean(correlations) > 0.9
    assert booster.feature_importance("gain")[0] > 10 * booster.feature_importance("gain")[1:].max()


@pytest.fixture
def ranked_candidate(world: TinyWorld, tmp_path: Path, db: Path, ebr_home: Path) -> Path:
    """A fresh candidate with a ranker (variant cosine) trained on the world's logged clicks."""
    candidate = stage(world, tmp_path / "candidate")
    rcfg = typed(load_config(["ranking.candidates=20", "ranking.num_threads=1"]).ranking)
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        asked, clicks = requests(world, 200, seed=11)
        train, targets = with_clicks(retrieve(service, asked, rcfg.candidates), clicks)
        valid = np.arange(len(train)) % 5 == 0
        ranker = fit(service, rcfg, "cosine", RankingContext.from_db(db), train, targets, valid)
    finally:
        service.close()
    ranker.save(tmp_path / "stage")
    publication.add_stage(candidate, STAGE, tmp_path / "stage", {"variant": "cosine"})
    return candidate


def test_a_version_with_a_ranker_verifies_serves_and_rolls_back(
    ranked_candidate: Path, world: TinyWorld, tmp_path: Path, ebr_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cold_open(swapper: HotSwapper, version: str) -> SearchService:  # the placeholder tower stays unloaded
        folder = home.versions_dir(swapper.dataset) / version
        return SearchService.open(folder, swapper.config, False, dataset=swapper.dataset)

    monkeypatch.setattr(HotSwapper, "_open", cold_open)
    manifest = registry.verify_version(ranked_candidate)
    assert {"stages/ranker/trees.json", "stages/ranker/model.txt", "stages/ranker/ranker.json"} <= set(
        manifest["files"]
    )
    asked, clicks = requests(world, 30, seed=12)
    service = SearchService.open(ranked_candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        ranked = service.search_many([replace(r, limit=10) for r in asked])
        plain = service.search_many([replace(r, limit=20, stages=STAGES_OFF) for r in asked])
        stage_ = service.stages["ranker"]
        wide = service.search(replace(asked[0], limit=stage_.candidates + 5))
        wide_plain = service.search(replace(asked[0], limit=stage_.candidates + 5, stages=STAGES_OFF))
        batch = retrieve(service, asked, stage_.candidates)
        scores, _ = stage_.scores(service, batch)
    finally:
        service.close()
    # past its candidates the ranker keeps the engine's order, unscored: it ranks only what it was trained on
    n = stage_.candidates
    if len(wide_plain.hits.doc_ids) > n:
        assert wide.hits.doc_ids[n:].tolist() == wide_plain.hits.doc_ids[n:].tolist()
        assert np.isnan(wide.hits.scores[n:]).all() and set(wide.hits.doc_ids[:n]) == set(
            wide_plain.hits.doc_ids[:n]
        )
    start = 0
    for got, base, retrieved in zip(ranked, plain, batch, strict=True):
        assert got.stages == ["ranker"] and len(got.hits.doc_ids) == 10
        mine = scores[start : start + len(retrieved.hits.doc_ids)]
        start += len(retrieved.hits.doc_ids)
        order = np.lexsort((np.arange(len(mine)), -mine))[:10]
        assert got.hits.doc_ids.tolist() == retrieved.hits.doc_ids[order].tolist()
        np.testing.assert_allclose(got.hits.scores, mine[order])
        assert set(got.hits.doc_ids) <= set(base.hits.doc_ids)  # re-ordered, not re-retrieved
    clicked_top = np.mean([c[0] in r.hits.doc_ids[:3] for r, c in zip(ranked, clicks, strict=True)])
    engine_top = np.mean([c[0] in r.hits.doc_ids[:3] for r, c in zip(plain, clicks, strict=True)])
    assert clicked_top >= engine_top  # trained on the same rule: at least as good as the engine's order

    plain_version = stage(world, tmp_path / "plain")
    first = publication.promote(plain_version, GATE, "run-plain", DATASET).version
    second = publication.promote(ranked_candidate, GATE, "run-ranked", DATASET).version
    assert registry.served_version(DATASET) == second
    with TestClient(create_app(load_engine_config(), watch=False, dataset=DATASET)) as client:
        body = {
            "vertical": "people",
            "query_text": asked[0].query_text,
            "vector": asked[0].vector,
            "limit": 5,
        }
        on = client.post("/search", json=body).json()
        off = client.post("/search", json=body | {"stages": {"ranker": False}}).json()
        bad = client.post("/search", json=body | {"stages": {"rankr": True}})
        wrong_type = client.post("/search", json=body | {"stages": {"ranker": "no"}})
    assert on["stages"] == ["ranker"] and off["stages"] == [] and on["nn_skipped"] is False
    assert len(on["results"]) == 5 and all(r["title"] for r in on["results"])
    assert bad.status_code == 422 and wrong_type.status_code == 422
    assert catalogue.rollback(DATASET, first) == second
    rolled = SearchService.open_served(load_engine_config(), writable=False, dataset=DATASET)
    try:
        assert rolled.stages == {} and rolled.search(replace(asked[0], limit=5)).stages == []
    finally:
        rolled.close()
    registry.verify_version(registry.served_version_dir(DATASET, verify=False).parent / second)


def test_a_changed_model_file_fails_verification(ranked_candidate: Path) -> None:
    model = ranked_candidate / "stages" / "ranker" / "trees.json"
    model.write_text(model.read_text() + " ")
    with pytest.raises(registry.CorruptVersionError, match="trees.json: checksum mismatch"):
        registry.verify_version(ranked_candidate)
    with pytest.raises(ValueError, match="not a ranker stage"):
        (ranked_candidate / "stages" / "ranker" / "ranker.json").write_text("{")
        load_ranker(ranked_candidate / "stages" / "ranker", {})


def test_the_gate_checks_ndcg_of_the_final_list_against_the_published_version() -> None:
    from ebr.evaluation.gate import GateConfig, evaluate_gate

    cfg = GateConfig.from_mapping(
        {"tolerance": 0.01, "k": 50, "floor": 0.1, "ndcg": {"k": 10, "tolerance": 0.02}}, ["people"]
    )
    recall = {"people": 0.9}
    kept = evaluate_gate(recall, recall, cfg, ndcg={"people": 0.79}, published_ndcg={"people": 0.80})
    lost = evaluate_gate(recall, recall, cfg, ndcg={"people": 0.77}, published_ndcg={"people": 0.80})
    first = evaluate_gate(recall, None, cfg, ndcg={"people": 0.5})
    assert kept.passed and not lost.passed and "ndcg@10=0.7700 < published 0.8000" in lost.reason
    check = next(c for c in first.checks if c.rule == "ndcg")
    assert first.passed and check.threshold is None and check.value == 0.5
    assert (
        GateConfig.from_mapping({"tolerance": 0.01, "k": 50, "floor": 0.1}, ["people"]).ndcg_tolerance is None
    )
