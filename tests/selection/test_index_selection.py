"""Index selection (ebr/selection/documents.py): predicates over a tiny log with known answers, the errors of
bad ones, and a version built with one: its (nn) fields hold only the selected documents, term matching
still finds the others, the manifest records it, it verifies, and a document added later enters the nn."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ebr import registry
from ebr.ann.quantize import build_index, set_nprobe
from ebr.config import load_config, typed
from ebr.models.ensembles import l2_normalize
from ebr.registry.publication import VersionPieces, stage_version
from ebr.retrieval.build import build_engine, build_engine_index
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.selection.documents import IndexSelectionError, Selection, select_documents

DATASET = "test"
ACTIVE = (
    "SELECT d.doc_id FROM documents d JOIN users u USING (user_id) "
    "WHERE d.vertical = 'people' AND u.is_active"
)
RECENT = (
    "SELECT doc_id FROM documents WHERE vertical = 'people' AND user_id IN (SELECT user_id FROM sessions "
    "WHERE ts >= (SELECT max(ts) FROM sessions) - INTERVAL 30 DAY)"
)
UPCOMING = (
    "SELECT doc_id FROM documents WHERE vertical = 'events' AND event_time >= (SELECT max(ts) FROM sessions)"
)
POPULAR = "SELECT doc_id FROM documents WHERE vertical = 'groups' AND popularity > 10;"


def tiny_log(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DuckDB log: people 1-6 (users 11-16, 11, 13, 15 active; 12 and 15 searched in the last 30 days of
    the logs, 14 only before), events 21-24 (23 and 24 after the newest session), groups 31-34 (popularity
    5, 20, 11, 10). Returns doc_ids and verticals in a shuffled row order."""
    documents = pd.DataFrame(
        {
            "doc_id": [1, 2, 3, 4, 5, 6, 21, 22, 23, 24, 31, 32, 33, 34],
            "vertical": ["people"] * 6 + ["events"] * 4 + ["groups"] * 4,
            "user_id": [11, 12, 13, 14, 15, 16] + [None] * 8,
            "event_time": [None] * 6
            + pd.to_datetime(["2026-01-10", "2026-03-01", "2026-03-02", "2026-06-01"]).tolist()
            + [None] * 4,
            "popularity": [1.0] * 10 + [5.0, 20.0, 11.0, 10.0],
        }
    )
    users = pd.DataFrame({"user_id": range(11, 17), "is_active": [True, False, True, False, True, False]})
    sessions = pd.DataFrame(
        {
            "session_id": [1, 2, 3, 4],
            "user_id": [12, 14, 15, 15],
            "ts": pd.to_datetime(
                ["2026-02-20 00:00", "2026-01-05 00:00", "2026-01-01 00:00", "2026-03-01 12:00"]
            ),
        }
    )
    with duckdb.connect(str(path)) as con:
        for name, frame in (("documents", documents), ("users", users), ("sessions", sessions)):
            con.register("_frame", frame)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _frame")
            con.unregister("_frame")
    order = np.random.default_rng(0).permutation(len(documents))
    return documents["doc_id"].to_numpy(np.int64)[order], documents["vertical"].to_numpy(object)[order]


def chosen(selection: Selection, doc_ids: np.ndarray, vertical: str, verticals: np.ndarray) -> list[int]:
    return sorted(doc_ids[selection.mask & (verticals == vertical)].tolist())


@pytest.mark.parametrize(
    ("vertical", "sql", "expected"),
    [
        ("people", ACTIVE, [1, 3, 5]),
        ("people", RECENT, [2, 5]),
        ("events", UPCOMING, [23, 24]),
        ("groups", POPULAR, [32, 33]),
        ("groups", None, [31, 32, 33, 34]),
    ],
)
def test_predicates_select_the_known_documents(
    tmp_path: Path, vertical: str, sql: str | None, expected: list[int]
) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    selection = select_documents(db, doc_ids, verticals, {vertical: sql})
    assert chosen(selection, doc_ids, vertical, verticals) == expected
    for other in {"people", "events", "groups"} - {vertical}:  # the other verticals keep every document
        assert chosen(selection, doc_ids, other, verticals) == sorted(doc_ids[verticals == other].tolist())
    total = {"people": 6, "events": 4, "groups": 4}
    assert selection.counts[vertical] == {"documents": total[vertical], "indexed": len(expected)}
    summary = selection.summary()
    assert summary["verticals"][vertical]["predicate"] == sql
    assert summary["indexed"] == int(selection.mask.sum()) and summary["documents"] == 14


def test_predicates_of_several_verticals_at_once(tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    selection = select_documents(
        db, doc_ids, verticals, {"people": ACTIVE, "events": UPCOMING, "groups": POPULAR}
    )
    assert sorted(doc_ids[selection.mask].tolist()) == [1, 3, 5, 23, 24, 32, 33]


@pytest.mark.parametrize(
    ("predicates", "message"),
    [
        ({"people": "SELECT 1 AS x"}, "people: returns no doc_id column (columns: x)"),
        ({"people": "SELEC doc_id FROM documents"}, "people: Parser Error: syntax error"),
        ({"people": "SELECT doc_id FROM nowhere"}, "people: Catalog Error: Table with name nowhere"),
        (
            {"people": "SELECT 1 AS doc_id; SELECT 2 AS doc_id"},
            "people: must be exactly one SELECT statement",
        ),
        ({"people": "DELETE FROM documents"}, "people: must be exactly one SELECT statement, got DELETE"),
        ({"people": "SELECT 'a' AS doc_id"}, "people: doc_id is VARCHAR, not an integer"),
        ({"people": "SELECT NULL::BIGINT AS doc_id"}, "people: doc_id has NULL values"),
        ({"people": "SELECT 99 AS doc_id"}, "people: returns 1 doc_ids that are no document, e.g. 99"),
        ({"people": "SELECT doc_id FROM documents WHERE false"}, "people: selects no document"),
        ({"people": "SELECT doc_id FROM documents"}, "people: returns 8 documents of other verticals"),
        ({"jobs": "SELECT 1 AS doc_id"}, "jobs: no such vertical (the documents': events, groups, people)"),
        ({"people": "SELECT * FROM read_csv('/etc/hostname')"}, "people: Permission Error"),
    ],
)
def test_bad_predicates_fail_with_one_line_naming_the_vertical(
    tmp_path: Path, predicates: dict[str, str], message: str
) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    with pytest.raises(IndexSelectionError) as error:
        select_documents(db, doc_ids, verticals, predicates)
    text = str(error.value)
    assert text.startswith("index_selection.verticals.") and message in text and "\n" not in text


def test_a_predicate_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    out = tmp_path / "out.csv"
    for sql in (
        f"SELECT doc_id FROM (COPY documents TO '{out}') AS x",
        "CREATE TABLE x AS SELECT 1 AS doc_id",
    ):
        with pytest.raises(IndexSelectionError):
            select_documents(db, doc_ids, verticals, {"people": sql})
    assert not out.exists()
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables == {"documents", "users", "sessions"}


# ----- a version built with a selection

KEY = "u"


def version_pieces(doc_ids: np.ndarray, verticals: np.ndarray, selection: Selection | None) -> VersionPieces:
    """Documents with a term of their own, one embedding key and its trained IVF-PQ index."""
    docs = l2_normalize(np.random.default_rng(1).standard_normal((len(doc_ids), 8)).astype(np.float32))
    index = build_index("IVF2,PQ4x4", np.tile(docs, (20, 1)), "inner_product")  # enough to train on
    index.reset()
    set_nprobe(index, 2)
    documents = pd.DataFrame(
        {
            "doc_id": doc_ids,
            "vertical": verticals,
            "title": [f"doc {i}" for i in doc_ids],
            "terms": [[f"text:doc{i}", f"vertical:{v}"] for i, v in zip(doc_ids, verticals, strict=True)],
        }
    )
    if selection is not None:
        documents["nn_indexed"] = selection.mask
    return VersionPieces(
        doc_ids=doc_ids,
        documents=documents,
        embeddings={KEY: docs},
        indexes={KEY: index},
        towers={},
        retrievers={},
        build_engine=build_engine,
        index_selection=selection.summary() if selection is not None else {},
    )


def nn_request(vector: np.ndarray, vertical: str | None = None) -> SearchRequest:
    expr = f"(nn {KEY} :k 50 :nprobe 2)"
    if vertical is not None:
        expr = f"(and (term vertical:{vertical}) {expr})"
    return SearchRequest(expr=expr, vector=vector.tolist(), limit=50)


def test_a_version_with_a_selection_serves_nn_from_the_selected_documents_only(
    tmp_path: Path, ebr_home: Path
) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    selection = select_documents(db, doc_ids, verticals, {"people": ACTIVE, "groups": POPULAR})
    pieces = version_pieces(doc_ids, verticals, selection)
    folder = tmp_path / "candidate"
    stage_version(pieces, folder, {}, {}, "run-1", {})
    manifest = registry.verify_version(folder)
    assert manifest["index_selection"]["verticals"]["people"] == {
        "predicate": ACTIVE,
        "documents": 6,
        "indexed": 3,
    }
    assert manifest["index_selection"]["verticals"]["events"] == {
        "predicate": None,
        "documents": 4,
        "indexed": 4,
    }
    assert manifest["index_selection"]["indexed"] == 3 + 4 + 2
    service = SearchService.open(folder, load_engine_config(), writable=True, dataset=DATASET)
    try:
        assert service.engine.index.fields[KEY].ntotal == 9
        selected = set(doc_ids[selection.mask].tolist())
        vectors = pieces.embeddings[KEY]
        for row, doc_id in enumerate(doc_ids.tolist()):
            found = set(service.search(nn_request(vectors[row])).hits.doc_ids.tolist())
            assert found == selected  # every indexed document, and only those (k > their number)
            term = service.search(SearchRequest(expr=f"(term text:doc{doc_id})")).hits.doc_ids.tolist()
            assert term == [doc_id]  # term matching finds every document
            either = f"(or (term text:doc{doc_id}) (nn {KEY} :k 1 :nprobe 2))"
            hits = service.search(SearchRequest(expr=either, vector=vectors[row].tolist())).hits.doc_ids
            assert doc_id in hits.tolist()
        # a document added later through the realtime path with an embedding enters the nn field
        new = l2_normalize(np.ones((1, 8), np.float32))[0]
        service.engine.add(1000, ["text:doc1000", "vertical:people"], {KEY: new.tolist()})
        assert 1000 in service.search(nn_request(new, "people")).hits.doc_ids.tolist()
        # an unselected document updated without an embedding stays out of it, through a compaction too
        unselected = int(doc_ids[~selection.mask][0])
        service.engine.update(unselected, ["text:changed", f"vertical:{verticals[~selection.mask][0]}"])
        service.engine.compact()
        assert service.engine.index.fields[KEY].ntotal == 10
        assert unselected not in service.search(nn_request(vectors[~selection.mask][0])).hits.doc_ids.tolist()
        assert service.search(SearchRequest(expr="(term text:changed)")).hits.doc_ids.tolist() == [unselected]
    finally:
        service.close()


def test_without_a_selection_every_document_is_in_the_nn_field(tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    folder = tmp_path / "plain"
    stage_version(version_pieces(doc_ids, verticals, None), folder, {}, {}, "run-1", {})
    manifest = registry.verify_version(folder)
    assert manifest["index_selection"] == {}
    meta = (folder / "engine" / "meta.json").read_text()
    assert f'"ntotal": {len(doc_ids)}' in meta


def test_a_changed_selection_fails_verification(tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    doc_ids, verticals = tiny_log(db)
    selection = select_documents(db, doc_ids, verticals, {"events": UPCOMING})
    folder = tmp_path / "candidate"
    pieces = version_pieces(doc_ids, verticals, selection)
    stage_version(pieces, folder, {}, {}, "run-1", {})
    pieces.documents.assign(nn_indexed=True).to_parquet(folder / "documents.parquet", index=False)
    with pytest.raises(registry.CorruptVersionError, match="documents.parquet: checksum mismatch"):
        registry.verify_version(folder)


def test_build_engine_index_adds_the_selected_rows_only() -> None:
    doc_ids = np.array([5, 3, 9, 1], dtype=np.int64)
    vectors = l2_normalize(np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32))
    trained = build_index("IVF2,PQ4x4", np.tile(vectors, (40, 1)), "inner_product")
    trained.reset()
    terms = [[f"text:d{i}"] for i in doc_ids]
    selected = np.array([True, False, False, True])
    index = build_engine_index(doc_ids, terms, {KEY: vectors}, {KEY: trained}, selected)
    assert [index.fields[KEY].contains(row) for row in range(4)] == selected.tolist()
    assert index.fields[KEY].ntotal == 2 and index.live_count == 4
    with pytest.raises(ValueError, match="selected must be a bool per doc id"):
        build_engine_index(doc_ids, terms, {KEY: vectors}, {KEY: trained}, np.ones(3, bool))


def test_the_config_group_composes() -> None:
    assert typed(load_config().index_selection).verticals == {}
    cfg = load_config(
        [f'+index_selection.verticals.groups="{POPULAR}"', "+index_selection.verticals.people=null"]
    )
    assert typed(cfg.index_selection).verticals == {"groups": POPULAR, "people": None}
