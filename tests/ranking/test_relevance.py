"""The EBR results of a request and the relevance filter: EBR results equal the hits the term part misses
(known answers on the tiny candidate); the threshold keeps the target recall; a version with a filter
verifies, serves (only EBR results the model rejects are dropped) and rolls back like any other."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feedback_pieces import DATASET, WORDS, CentreEncoder, make_candidate, relevant, vertical_of, word_of

from ebr import registry
from ebr.config import RelevanceFilterConfig, engine_defaults
from ebr.ranking.ebr_results import ebr_results
from ebr.ranking.rating import import_labels, labelled_tasks, sample_tasks
from ebr.ranking.relevance import (
    NotTrained,
    filter_metrics,
    labelled_examples,
    load_filter,
    recall_threshold,
    train_filter,
)
from ebr.ranking.served_log import ServedLog, load_served
from ebr.registry import catalogue, publication
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.query import parse
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.retrieval.stages import Retrieved


@pytest.fixture
def towers(monkeypatch: pytest.MonkeyPatch) -> None:
    import ebr.models.export

    monkeypatch.setattr(ebr.models.export, "load_query_encoder", CentreEncoder)


@pytest.fixture
def candidate(tmp_path: Path, ebr_home: Path, towers: None) -> Path:
    return make_candidate(tmp_path)


def _open(folder: Path) -> SearchService:
    return SearchService.open(folder, load_engine_config(), writable=False, dataset=DATASET)


def test_ebr_results_are_the_hits_the_term_part_misses(candidate: Path) -> None:
    service = _open(candidate)
    try:
        request = SearchRequest(vertical="people", query_text="w1", limit=1000)
        response = service.search(request)
        ids = response.hits.doc_ids
        assert len(ids) == 100 and all(vertical_of(int(d)) == "people" for d in ids)  # radius 2: all of them
        root = parse(response.expr)
        mask = ebr_results(service, Retrieved(request, root, response.hits, {}))
        assert mask.tolist() == [word_of(int(d)) != "w1" for d in ids]
        no_nn = parse("(and (term vertical:people) (term text:w1))")
        assert not ebr_results(service, Retrieved(request, no_nn, response.hits, {})).any()
        nn_only = parse("(nn unified :radius 2.0 :nprobe 8)")
        assert ebr_results(service, Retrieved(request, nn_only, response.hits, {})).all()
        # within the given ids only: an id the index does not hold never matches the term part
        assert service.engine.matches(parse("(term text:w1)"), np.array([1001, 1006, 5])).tolist() == [
            True,
            True,
            False,
        ]
    finally:
        service.close()


def test_recall_threshold_and_metrics_known_answers() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.2])
    y = np.array([1.0, 1.0, 0.0, 1.0])
    assert recall_threshold(p, y, 2 / 3) == 0.8
    assert recall_threshold(p, y, 1.0) == 0.2
    m = filter_metrics(p, y, 0.8)
    assert m == {
        "examples": 4,
        "precision_before": 0.75,
        "precision_after": 1.0,
        "recall": 2 / 3,
        "kept": 0.5,
    }


FILTER = RelevanceFilterConfig(
    variant="cosine",
    target_recall=0.95,
    holdout_share=0.3,
    min_labels=20,
    candidates=0,
    params={"n_estimators": 30, "num_leaves": 4, "min_child_samples": 3, "learning_rate": 0.2},
)


def _labelled(service: SearchService, tmp_path: Path) -> pd.DataFrame:
    """Serve each word in each vertical, log, sample every EBR result, label it by the oracle."""
    db = tmp_path / "feedback.duckdb"
    log = ServedLog(replace(engine_defaults().serving.log_results, flush_records=3), tmp_path / "served")
    requests = [
        SearchRequest(vertical=v, query_text=w, limit=1000) for v in ("people", "groups") for w in WORDS
    ]
    for request, response in zip(requests, service.search_many(requests), strict=True):
        log.record(service, request, response)
    log.close()
    assert load_served(db, tmp_path / "served", "run").requests == len(requests)
    sample_tasks(db, 10_000, 0, "batch-1")
    import duckdb

    with duckdb.connect(str(db)) as con:
        tasks = con.execute("SELECT task_id, query, doc_id FROM rating_tasks").df()
    labels = pd.DataFrame(
        {
            "task_id": tasks["task_id"],
            "label": [
                float(relevant(q, int(d))) for q, d in zip(tasks["query"], tasks["doc_id"], strict=True)
            ],
            "rater": "oracle",
        }
    )
    assert import_labels(db, Path("oracle.csv"), "run", frame=labels).landed == len(tasks)
    return labelled_tasks(db, 1.0)


def test_a_version_with_a_filter_verifies_serves_and_rolls_back(candidate: Path, tmp_path: Path) -> None:
    service = _open(candidate)
    try:
        tasks = _labelled(service, tmp_path)
        examples = labelled_examples(service, tasks, "cosine", 1000, None)
        assert examples.missing == 0 and len(examples.labels) == len(tasks) == 2 * 5 * 80
        trained, summary = train_filter(examples, FILTER, 0, None)
    finally:
        service.close()
    assert summary["holdout_metrics"]["recall"] >= 0.95
    assert (
        summary["holdout_metrics"]["precision_after"] > summary["holdout_metrics"]["precision_before"] + 0.3
    )
    # a version with no filter published first, then the one with it: rollback serves the first again
    first = publication.promote(candidate, {"passed": True, "reason": "test"}, "run-0", DATASET).version
    second_dir = make_candidate(tmp_path / "second")
    trained.save(tmp_path / "stage")
    publication.add_stage(second_dir, "relevance_filter", tmp_path / "stage", summary)
    manifest = registry.verify_version(second_dir)
    assert "stages/relevance_filter/trees.json" in manifest["files"]
    loaded = load_filter(second_dir / "stages" / "relevance_filter", manifest["stages"]["relevance_filter"])
    assert loaded.threshold == trained.threshold
    second = publication.promote(second_dir, {"passed": True, "reason": "test"}, "run-2", DATASET).version
    served = SearchService.open_served(load_engine_config(), writable=False, dataset=DATASET)
    try:
        request = SearchRequest(vertical="people", query_text="w2", limit=1000)
        on, off = served.search_many([request, replace(request, stages={"relevance_filter": False})])
        mask = ebr_results(served, Retrieved(request, parse(off.expr), off.hits, {}))
    finally:
        served.close()
    assert on.stages == ["relevance_filter"] and off.stages == []
    kept, every = set(on.hits.doc_ids.tolist()), off.hits.doc_ids.tolist()
    dropped = [d for d in every if d not in kept]
    assert kept <= set(every) and dropped
    assert all(word_of(d) == "w2" for d, e in zip(every, mask, strict=True) if not e)  # term results...
    assert all(d in kept for d, e in zip(every, mask, strict=True) if not e)  # ...are never dropped
    assert np.mean([not relevant("w2", d) for d in dropped]) > 0.9  # what it drops is irrelevant
    assert catalogue.rollback(DATASET, first) == second
    assert registry.served_version(DATASET) == first


def test_one_class_or_few_labels_train_no_filter() -> None:
    from ebr.ranking.relevance import Examples

    examples = Examples(
        np.zeros((30, 2), np.float32), np.zeros(30), [f"t{i}" for i in range(30)], ["a", "b"], 0
    )
    with pytest.raises(NotTrained, match="one class only"):
        train_filter(examples, FILTER, 0, None)
    with pytest.raises(NotTrained, match="fewer than feedback.filter.min_labels=20"):
        train_filter(
            replace(examples, matrix=examples.matrix[:5], labels=np.ones(5), task_ids=["a"] * 5),
            FILTER,
            0,
            None,
        )
