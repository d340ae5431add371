"""Term payloads: input forms, the folder format, the log, updates, compaction, query bounds and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import clustered, corpus_index, make_corpus, write_version

from ebr.retrieval.documents import Update
from ebr.retrieval.executor import execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.query import parse
from ebr.retrieval.store import Engine

Q = {"unified": clustered(np.random.default_rng(5), 1)[0]}


def results(index_or_engine: EngineIndex | Engine, expr: str) -> list[tuple[int, float | None]]:
    if isinstance(index_or_engine, Engine):
        hits = index_or_engine.search(parse(expr), Q)
    else:
        hits = execute(index_or_engine, parse(expr), Q)
    return [(d["doc_id"], d["score"]) for d in hits.as_dicts()]


@pytest.fixture
def index(trained) -> EngineIndex:
    """200 documents whose text terms mostly carry a payload."""
    return corpus_index(make_corpus(seed=31, n=200, payloads=True), trained)


def test_terms_are_strings_pairs_or_a_mapping() -> None:
    index = EngineIndex.from_documents(
        np.array([1, 2, 3]),
        [
            ["vertical:people", ("text:john", 0.9), ["quality:static", 0.25]],  # pairs, tuple or list
            {"vertical:people": None, "Text:John": 0.4, "quality:static": 0.75},  # a mapping, normalised
            ["vertical:people", "text:john"],  # no payload
        ],
        {},
    )
    assert sorted(index.document_terms(1)) == ["quality:static", "text:john", "vertical:people"]
    assert index.document_payloads(1) == {"text:john": float(np.float32(0.4)), "quality:static": 0.75}
    assert index.document_payloads(0) == {"text:john": float(np.float32(0.9)), "quality:static": 0.25}
    assert index.document_payloads(2) == {}
    with pytest.raises(ValueError, match="doc_id 5: payload of term 'text:a' must be a number"):
        EngineIndex.from_documents(np.array([5]), [[("text:a", "high")]], {})


def test_bounds_filter_postings_and_score_orders_by_payload(trained) -> None:
    docs = [
        ["vertical:people", ("text:john", 0.9), ("quality:static", 0.25)],
        ["vertical:people", ("text:john", 0.4), ("quality:static", 0.75)],
        ["vertical:people", "text:john"],
        ["vertical:people", ("text:john", 0.35)],
    ]
    index = EngineIndex.from_documents(np.array([11, 12, 13, 14]), docs, {})
    assert results(index, "(term text:john)") == [(11, None), (12, None), (13, None), (14, None)]
    assert results(index, "(term text:john :min 0.4)") == [(11, None), (12, None)]  # inclusive
    assert results(index, "(term text:john :max 0.35)") == [(14, None)]  # float32 0.35 on both sides
    assert results(index, "(term text:john :min -100)") == [(11, None), (12, None), (14, None)]
    scored = results(index, "(term text:john :score)")  # no payload: still matches, scores nothing
    assert [d for d, _ in scored] == [11, 12, 14, 13] and scored[-1][1] is None
    # a static score ranks the matches of another term; the best of several scoring terms counts
    ranked = results(index, "(and (term text:john) (term quality:static :score))")
    assert ranked == [(12, 0.75), (11, 0.25)]
    both = results(
        index, "(and (term vertical:people) (or (term quality:static :score) (term text:john :score)))"
    )
    assert [d for d, _ in both] == [11, 12, 14, 13]


def test_payload_scores_combine_with_nn_scores_by_the_best(trained) -> None:
    corpus = make_corpus(seed=32, n=300, payloads=True)
    index = corpus_index(corpus, trained)
    nn_only = dict(results(index, "(and (term text:w1) (nn unified :radius 2 :nprobe 16))"))
    hybrid = dict(results(index, "(and (term text:w1 :score) (nn unified :radius 2 :nprobe 16))"))
    assert nn_only.keys() == hybrid.keys()
    raised = 0
    for doc_id, terms in corpus.doc_terms().items():
        if doc_id in hybrid:
            payload = terms["text:w1"]
            want = nn_only[doc_id] if payload is None else max(nn_only[doc_id], float(np.float32(payload)))
            assert hybrid[doc_id] == pytest.approx(want, abs=1e-6)
            raised += want > nn_only[doc_id]
    assert raised  # some payloads beat the cosine similarity


def test_payloads_survive_save_and_load_and_payload_free_folders_keep_format_1(
    index: EngineIndex, tmp_path: Path, trained
) -> None:
    folder = tmp_path / "with"
    folder.mkdir()
    index.save(folder)
    assert json.loads((folder / "meta.json").read_text())["format"] == 2
    loaded = EngineIndex.load(folder)
    expr = "(and (term text:w2 :min 0.2 :score) (not (term text:w3 :max 0.3)))"
    assert results(loaded, expr) == results(index, expr) != []
    assert all(loaded.document_payloads(i) == index.document_payloads(i) for i in range(index.internal_count))
    # a published version built by ebr/retrieval/build.py (plain string terms) is format 1, readable as ever
    version = write_version(tmp_path / "v1", make_corpus(seed=33, n=50), trained)
    meta = json.loads((version / "engine" / "meta.json").read_text())
    assert meta["format"] == 1 and not (version / "engine" / "postings_payloads.npy").exists()
    plain = EngineIndex.load(version / "engine")
    assert not plain.has_payloads and results(plain, "(term text:w1 :min 0)") == []
    meta["format"] = 3
    (version / "engine" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format 3, this engine reads formats"):
        EngineIndex.load(version / "engine")


def test_payloads_through_the_log_updates_deletes_and_compaction(index: EngineIndex, tmp_path: Path) -> None:
    base = tmp_path / "engine"
    base.mkdir()
    index.save(base)
    state = tmp_path / "state"
    engine = Engine.open(base, state)
    some, gone = int(engine.index.doc_ids[0]), int(engine.index.doc_ids[1])
    engine.add(7, ["vertical:people", ["text:fresh", 0.5]], {"unified": Q["unified"].tolist()})
    engine.add(8, {"text:fresh": 2.0, "location:oslo": None}, {})
    engine.update(some, embeddings={"unified": Q["unified"].tolist()})  # terms and payloads kept
    engine.update(8, terms={"text:fresh": -1.0})  # terms and payloads replaced
    engine.delete(gone)
    kept = index.document_payloads(0)
    assert engine.document(some)["payloads"] == kept and kept
    assert engine.document(8) == {
        "doc_id": 8,
        "terms": ["text:fresh"],
        "payloads": {"text:fresh": -1.0},
        "keys": [],
    }
    queries = [
        "(term text:fresh :min 0 :score)",
        "(term text:fresh :score)",
        "(and (term text:w1 :min 0.3) (nn unified :radius 1 :nprobe 16))",
        "(or (term text:w4 :score) (term text:w5 :max 0.1 :score))",
    ]
    before = {q: results(engine, q) for q in queries}
    assert before["(term text:fresh :min 0 :score)"] == [(7, 0.5)]
    assert [d for d, _ in before["(term text:fresh :score)"]] == [7, 8]
    engine.close()
    reopened = Engine.open(base, state)  # the log replayed over the base folder
    assert {q: results(reopened, q) for q in queries} == before
    assert reopened.document(some)["payloads"] == kept
    reopened.compact()
    assert {q: results(reopened, q) for q in queries} == before
    snapshot = state / "snapshots" / "1"
    assert json.loads((snapshot / "meta.json").read_text())["format"] == 2
    reopened.close()
    again = Engine.open(base, state)
    assert {q: results(again, q) for q in queries} == before
    assert again.document(7)["payloads"] == {"text:fresh": 0.5}


def test_the_payload_array_exists_only_while_some_payload_does() -> None:
    index = EngineIndex.from_documents(np.array([1, 2]), [[("text:a", 1.0)], ["text:b"]], {})
    index.delete(1)
    assert index.has_payloads and not index.compacted().has_payloads
    plain = EngineIndex.from_documents(np.array([1, 2]), [["text:a"], ["text:a"]], {})
    assert not plain.has_payloads
    plain.update(Update(2, ["text:a"], {}, {"text:a": 3.0}))  # the first payload, on a delta posting
    assert results(plain, "(term text:a :min 3)") == [(2, None)]
    assert plain.compacted().document_payloads(1) == {"text:a": 3.0}
