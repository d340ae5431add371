"""The feedback loop's pieces: the served-results log (every line accounted for, a torn line quarantined, a
write failure never fails a search), seeded stratified sampling under a budget, the simulated raters (RATER
SIMULATION: intents at error rate 0, about the configured share flipped otherwise), label import errors."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from feedback_pieces import DATASET, WORDS, CentreEncoder, make_candidate, word_of

from ebr.config import engine_defaults
from ebr.ranking.raters import IntentJudge, agreement, simulate_labels
from ebr.ranking.rating import allocate, import_labels, label_counts, pending_tasks, sample_tasks, task_id
from ebr.ranking.served_log import BadLine, ServedLog, close_stale_segments, load_served, parse_line
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchRequest, SearchService


@pytest.fixture
def service(tmp_path: Path, ebr_home: Path, monkeypatch: pytest.MonkeyPatch):
    import ebr.models.export

    monkeypatch.setattr(ebr.models.export, "load_query_encoder", CentreEncoder)
    opened = SearchService.open(
        make_candidate(tmp_path), load_engine_config(), writable=False, dataset=DATASET
    )
    yield opened
    opened.close()


def _config(**changes):
    return replace(engine_defaults().serving.log_results, **changes)


def _serve(service: SearchService, log: ServedLog, n: int) -> list[SearchRequest]:
    requests = [SearchRequest(vertical="people", query_text=WORDS[i % 5], limit=10) for i in range(n)]
    for request, response in zip(requests, service.search_many(requests), strict=True):
        log.record(service, request, response)
    return requests


def test_served_log_writes_segments_and_loads_every_line(service: SearchService, tmp_path: Path) -> None:
    folder, db = tmp_path / "served", tmp_path / "f.duckdb"
    log = ServedLog(_config(flush_records=2, segment_records=3), folder)
    _serve(service, log, 7)
    log.flush()
    assert log.written == 7 and sorted(p.suffix for p in folder.iterdir()) == [".jsonl", ".jsonl", ".part"]
    log.close()
    assert len(list(folder.glob("*.jsonl"))) == 3 and not list(folder.glob("*.part"))
    first = json.loads(sorted(folder.glob("*.jsonl"))[0].read_text().splitlines()[0])
    assert first["vertical"] == "people" and first["query"] == "w0" and first["returned"] == 10
    assert all(h["rank"] >= 1 for h in first["hits"]) and first["version"].startswith("candidate-")
    # a segment left open by a dead process, its last line torn, is closed and loaded with it quarantined
    stale = folder / "20260101T000000000000-999999999-abcdef-00001.jsonl.part"
    good = sorted(folder.glob("*.jsonl"))[0].read_text().splitlines()[0]
    stale.write_text(good + "\n" + good[: len(good) // 2])
    assert [p.name for p in close_stale_segments(folder)] == [stale.name.removesuffix(".part")]
    report = load_served(db, folder, "run-1")
    assert report.to_dict() == {
        "segments": 4,
        "lines": 9,
        "requests": 8,
        "hits": report.hits,
        "quarantined": 1,
    }
    with duckdb.connect(str(db)) as con:
        reason = con.execute("SELECT reason, source_row FROM quarantine").fetchall()
        rows = con.execute("SELECT count(*), count(DISTINCT request_id) FROM served_results").fetchone()
    assert reason[0][0].startswith("not JSON (a torn or corrupt line)") and reason[0][1] == 2
    assert rows == (report.hits, 8)
    assert load_served(db, folder, "run-2").segments == 0  # loaded once only


def test_the_search_route_logs_its_ebr_results(tmp_path: Path, ebr_home: Path, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    import ebr.models.export
    from ebr.ranking.served_log import served_dir
    from ebr.registry import publication
    from ebr.retrieval.api import create_app

    monkeypatch.setattr(ebr.models.export, "load_query_encoder", CentreEncoder)
    publication.promote(make_candidate(tmp_path), {"passed": True, "reason": "test"}, "run-1", DATASET)
    with TestClient(create_app(load_engine_config(), watch=False, dataset=DATASET)) as client:
        answer = client.post("/search", json={"vertical": "people", "query_text": "w1", "limit": 20}).json()
    segments = sorted(served_dir(DATASET).glob("*.jsonl"))  # closed when the server stopped
    assert len(segments) == 1
    (line,) = [json.loads(t) for t in segments[0].read_text().splitlines()]
    returned = [r["doc_id"] for r in answer["results"]]
    expected = [(i + 1, d) for i, d in enumerate(returned) if word_of(d) != "w1"]
    assert [(h["rank"], h["doc_id"]) for h in line["hits"]] == expected and expected
    assert line["version"] == "v0001" and line["query"] == "w1" and line["returned"] == 20


def test_bad_lines_are_named(service: SearchService) -> None:
    line = {"ts": "2026-01-01T00:00:00+00:00", "version": "v1", "expr": "(nn u)", "returned": 2}
    with pytest.raises(BadLine, match="hits: expected a non-empty list"):
        parse_line(json.dumps(line))
    with pytest.raises(BadLine, match=r"hits\[0\].rank: 3 is not within 1..returned \(2\)"):
        parse_line(json.dumps(line | {"hits": [{"doc_id": 1, "rank": 3, "score": 0.5}]}))
    with pytest.raises(BadLine, match="searcher_id: expected an integer"):
        parse_line(json.dumps(line | {"searcher_id": "x", "hits": [{"doc_id": 1, "rank": 1}]}))


def test_a_failing_write_never_fails_a_search(service: SearchService, tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    log = ServedLog(_config(flush_records=1), blocked / "served")
    _serve(service, log, 3)
    log.close()
    assert log.written == 0 and log.dropped == 3
    assert sum("served-results log" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_sampling_is_seeded_stratified_and_within_budget(service: SearchService, tmp_path: Path) -> None:
    assert allocate({"a": 50, "b": 30, "c": 20}, 10) == {"a": 5, "b": 3, "c": 2}
    assert allocate({"a": 50, "b": 30, "c": 20}, 7) == {"a": 4, "b": 2, "c": 1}
    assert allocate({"a": 2, "b": 30}, 100) == {"a": 2, "b": 30}
    log = ServedLog(_config(), tmp_path / "served")
    requests = [
        SearchRequest(vertical=v, query_text=w, limit=20) for v in ("people", "events") for w in WORDS
    ]
    for request, response in zip(requests, service.search_many(requests), strict=True):
        log.record(service, request, response)
    log.close()
    picked = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        db = tmp_path / f"{name}.duckdb"
        load_served(db, tmp_path / "served", "run")
        summary = sample_tasks(db, 30, seed, "batch")
        assert summary["sampled"] == 30
        assert {v["vertical"]: v["sampled"] for v in summary["verticals"]} == {"events": 15, "people": 15}
        picked.append(set(pending_tasks(db)["task_id"]))
        assert (
            sample_tasks(db, 30, seed, "again")["sampled"] == 30 and len(pending_tasks(db)) == 60
        )  # new ones
    assert picked[0] == picked[1] and picked[0] != picked[2]


def _world(tmp_path: Path) -> tuple[Path, Path]:
    db, intents = tmp_path / "world.duckdb", tmp_path / "intents.parquet"
    with duckdb.connect(str(db)) as con:
        rows = "(1, 'people', 'Ann Lee'), (2, 'people', 'ann  lee!'), (3, 'groups', 'chess')"
        con.execute(f"CREATE TABLE sessions AS SELECT * FROM (VALUES {rows}) t(session_id, vertical, query)")
    pd.DataFrame({"session_id": [1, 2, 3], "target_doc_id": [10, 11, 30]}).to_parquet(intents)
    return intents, db


def test_simulated_raters_agree_with_intents_and_flip_the_configured_share(tmp_path: Path) -> None:
    judge = IntentJudge.from_world(*_world(tmp_path))
    assert judge.judge("people", "ANN LEE", 11) == 1.0 and judge.judge("people", "ann lee", 30) == 0.0
    assert judge.judge("groups", "ann lee", 10) is None  # never asked there: cannot be judged
    rng = np.random.default_rng(0)
    tasks = pd.DataFrame({"vertical": "people", "query": "ann lee", "doc_id": rng.integers(5, 15, 4000)})
    tasks["task_id"] = [f"t{i}" for i in range(len(tasks))]
    exact = simulate_labels(tasks, judge, 0.0, 0)
    assert agreement(exact, tasks, judge) == 1.0
    noisy = simulate_labels(tasks, judge, 0.2, 0)
    assert abs((1 - agreement(noisy, tasks, judge)) - 0.2) < 0.02
    again = simulate_labels(tasks, judge, 0.2, 0)
    assert noisy["label"].tolist() == again["label"].tolist()  # the same labels every time
    unknown = simulate_labels(tasks.assign(vertical="events"), judge, 0.0, 0)
    assert unknown.empty


def test_label_import_names_bad_rows_and_lands_the_valid_ones(tmp_path: Path) -> None:
    db = tmp_path / "f.duckdb"
    with duckdb.connect(str(db)) as con:
        from ebr.ranking.rating import ensure_tables

        ensure_tables(con)
        tid = task_id("people", "ann lee", 7, 10)
        con.execute(
            "INSERT INTO rating_tasks (task_id, vertical, query, searcher_id, doc_id) VALUES (?, ?, ?, ?, ?)",
            [tid, "people", "ann lee", 7, 10],
        )
    path = tmp_path / "labels.csv"
    path.write_text(
        "task_id,query,searcher_id,doc_id,label,rater,ts\n"
        f"{tid},,,,1,r1,2026-01-02T03:04:05\n"
        ",ann lee,7,10,0,r2,\n"
        f"{tid},,,,yes,r3,\n"
        "nope,,,,1,r4,\n"
        ",ann lee,8,10,1,r5,\n"
        f"{tid},,,,1,r6,yesterday\n"
    )
    report = import_labels(db, path, "run-1")
    assert report.landed == 2 and report.rows == 6
    assert report.errors == [
        f"{path}: row 3: label: expected a number, got 'yes'",
        f"{path}: row 4: task_id 'nope' is not a rating task",
        f"{path}: row 5: no rating task rates doc_id 10 for query 'ann lee' of searcher 8",
        f"{path}: row 6: ts: not an ISO time: 'yesterday'",
    ]
    with duckdb.connect(str(db)) as con:
        assert con.execute(
            "SELECT count(*) FROM quarantine WHERE table_name = 'rater_labels'"
        ).fetchone() == (4,)
        assert con.execute("SELECT rater, label FROM rater_labels ORDER BY rater").fetchall() == [
            ("r1", 1.0),
            ("r2", 0.0),
        ]
    counts = label_counts(db, 1.0)["verticals"]
    assert counts == [{"vertical": "people", "tasks": 1, "rated": 1, "labels": 2, "relevant": 1}]
    with pytest.raises(ValueError, match="a label file is .csv or .parquet"):
        import_labels(db, tmp_path / "labels.txt", "run-1")
    assert os.path.exists(db)


SMOKE = ["experiment=smoke", "data.world_seed=7"]


@pytest.mark.e2e
def test_the_feedback_flow_then_a_retrain_stages_and_gates_a_filter(ebr_home: Path, prefect_harness) -> None:
    from ebr import home, registry
    from ebr.flows.feedback import feedback
    from ebr.flows.retrain import retrain

    first = retrain(overrides=SMOKE)
    assert first["published_version"] and first["relevance_filter"]["trained"] is False  # no labels yet
    report = feedback(
        dataset=first["dataset"], replay=300, budget=300, overrides=[*SMOKE, "feedback.raters.error_rate=0.2"]
    )
    log = report["served_log"]
    assert log["requests"] > 0 and log["lines"] == log["requests"] + log["quarantined"]
    assert report["rating_tasks"]["sampled"] == 300
    assert (
        report["labels"]["landed"] == 300 - report["labels"]["unjudged"] and report["labels"]["rejected"] == 0
    )
    second = retrain(publish=False, overrides=SMOKE)
    assert second["relevance_filter"]["trained"], second["relevance_filter"]
    candidate = home.runs_dir(first["dataset"]) / second["run_id"] / "serving" / "candidate"
    manifest = registry.verify_version(candidate)  # staged before the gate measured it, checksummed
    assert manifest["stages"]["relevance_filter"]["labels"] == second["relevance_filter"]["labels"]
    assert "checks" in second["gate"]
