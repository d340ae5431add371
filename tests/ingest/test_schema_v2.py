"""Log schema version 2: any verticals, anonymous searches, optional document metadata, declared document
columns without text caps; version-1 folders and databases keep working."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from ebr.ingestion.errors import IngestConfigError

from .logs import T0, clean_logs, query, run_ingest, runs, snapshot, write_logs

COLUMNS = {"body": "text", "category": "categorical", "price": "numeric", "summary": "text"}
IN_SET = "expect_column_values_to_be_in_set(vertical)"
REF_VERTICAL = "expect_column_values_to_be_null(ref_vertical)"


def jobs_and_papers() -> dict[str, pd.DataFrame]:
    """A text-only log of two verticals that are not social: long bodies, no created_at or popularity, an
    undeclared column, anonymous searches."""
    return {
        "documents": pd.DataFrame(
            {
                "doc_id": [1, 2, 3, 4],
                "vertical": ["jobs", "jobs", "papers", "papers"],
                "title": ["Data engineer", "Baker", "Attention is all you need", "t" * 300],
                "body": ["b" * 150_000, "Bread and pastries.\nEarly shifts.", "w " * 60_000, None],
                "category": ["engineering", "food", "cs.CL", None],
                "price": [120_000.0, 35_000.5, None, 0.0],
                "internal_rank": [3, 1, 2, 4],  # not declared: ignored
            }
        ),
        "sessions": pd.DataFrame(
            {
                "session_id": [10, 11, 12],
                "user_id": pd.array([None, None, 7], dtype="Int64"),  # two anonymous searches
                "ts": [T0 + pd.Timedelta(hours=h) for h in range(3)],
                "vertical": ["jobs", "papers", "jobs"],
                "query": ["data engineer", "attention", "baker " * 100],
            }
        ),
        "impressions": pd.DataFrame(
            {
                "session_id": [10, 10, 11, 12],
                "doc_id": [1, 2, 3, 2],
                "position": [1, 2, 1, 1],
                "clicked": [True, False, True, True],
            }
        ),
    }


def _columns(db: Path, table: str) -> dict[str, tuple[str, bool]]:
    sql = f"SELECT column_name, data_type, is_nullable FROM duckdb_columns() WHERE table_name = '{table}'"
    return {name: (sql_type, nullable) for name, sql_type, nullable in query(db, sql)}


def _quarantined(db: Path, table: str, key: str) -> list[tuple[Any, ...]]:
    """(key, expectation, reason) of each quarantine record of `table`."""
    return query(
        db,
        f"SELECT CAST(json_extract_string(row_json, '$.{key}') AS BIGINT), expectation, reason "
        f"FROM quarantine WHERE table_name = '{table}' ORDER BY ALL",
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_text_only_log_of_any_verticals_ingests(fmt: str, tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    logs = write_logs(tmp_path / "logs", jobs_and_papers(), fmt=fmt)
    result = run_ingest(logs, db, documents={"columns": COLUMNS})

    assert {t: (c.loaded, c.quarantined) for t, c in result.tables.items()} == {
        "documents": (4, 0),
        "sessions": (3, 0),
        "impressions": (4, 0),
    }
    assert query(db, "SELECT count(*) FROM quarantine") == [(0,)]
    columns = _columns(db, "documents")
    assert {c: columns[c][0] for c in COLUMNS} == {
        "body": "VARCHAR",
        "category": "VARCHAR",
        "price": "DOUBLE",
        "summary": "VARCHAR",
    }
    assert "internal_rank" not in columns
    assert query(
        db, "SELECT doc_id, length(body), category, price, summary FROM documents ORDER BY doc_id"
    ) == [
        (1, 150_000, "engineering", 120_000.0, None),
        (2, 33, "food", 35_000.5, None),
        (3, 120_000, "cs.CL", None, None),
        (4, None, None, 0.0, None),
    ]
    assert query(db, "SELECT count(*) FROM documents WHERE created_at IS NULL AND popularity IS NULL") == [
        (4,)
    ]
    assert query(db, "SELECT count(*) FROM sessions WHERE user_id IS NULL") == [(2,)]
    assert query(db, "SELECT max(length(title)) FROM documents") == [(300,)]  # no maximum by default

    assert result.summary()["document_columns"] == COLUMNS
    assert runs(db)[0]["counts"]["document_columns"] == COLUMNS
    outcomes = {o["expectation"]: o for o in result.contracts["documents"]}
    assert outcomes[IN_SET]["skipped"] == "verticals not set: any value is accepted"

    again = run_ingest(logs, db, documents={"columns": COLUMNS})
    assert all(c.skipped_existing == c.read and c.loaded == 0 for c in again.tables.values())


def test_verticals_setting_restricts(tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    logs = write_logs(tmp_path / "logs", jobs_and_papers())
    result = run_ingest(logs, db, verticals=["jobs"], max_bad_fraction=1.0)
    assert {t: c.quarantined for t, c in result.tables.items()} == {
        "documents": 2,
        "sessions": 1,
        "impressions": 1,
    }
    expected = "expected vertical one of the allowed verticals (jobs), got 'papers'"
    assert _quarantined(db, "documents", "doc_id") == [(3, IN_SET, expected), (4, IN_SET, expected)]
    assert _quarantined(db, "sessions", "session_id") == [
        (11, IN_SET, expected),
        (11, REF_VERTICAL, "vertical papers is not in documents"),
    ]


def test_session_vertical_without_documents_is_quarantined(tmp_path: Path) -> None:
    """A session's vertical must be that of a document loaded before or accepted in the same run."""
    db = tmp_path / "ebr.duckdb"
    day1 = jobs_and_papers()
    day1["documents"] = day1["documents"].query("vertical == 'jobs'")
    day1["sessions"] = day1["sessions"].query("vertical == 'jobs'")
    day1["impressions"] = day1["impressions"].query("session_id != 11")
    run_ingest(write_logs(tmp_path / "day1", day1), db)

    full = jobs_and_papers()
    day2 = {
        "documents": full["documents"].query("vertical == 'papers'"),
        "sessions": pd.DataFrame(
            {
                "session_id": [11, 13, 14],
                "ts": T0 + pd.Timedelta(days=1),
                "vertical": ["papers", "jobs", "books"],  # accepted now, loaded before, none
                "query": ["attention", "baker", "novels"],
            }
        ),
        "impressions": pd.DataFrame(
            {"session_id": [11, 13, 14], "doc_id": [3, 2, 1], "position": 1, "clicked": False}
        ),
    }
    result = run_ingest(write_logs(tmp_path / "day2", day2), db, max_bad_fraction=1.0)
    assert result.tables["sessions"].loaded == 2
    assert _quarantined(db, "sessions", "session_id") == [
        (14, REF_VERTICAL, "vertical books is not in documents")
    ]
    assert query(db, "SELECT reason FROM quarantine WHERE table_name = 'impressions'") == [
        ("session_id 14 is not in sessions",)
    ]


def test_schema_version_1_folder_keeps_its_verticals(tmp_path: Path) -> None:
    """A version-1 folder must use people, groups, events, whatever `ingest.verticals` says."""
    tables = clean_logs()
    docs, sessions = tables["documents"], tables["sessions"]
    tables["documents"] = pd.concat([docs, docs.iloc[[4]].assign(doc_id=900, vertical="pages")])
    tables["sessions"] = pd.concat([sessions, sessions.iloc[[0]].assign(session_id=1004, vertical="videos")])
    logs = write_logs(tmp_path / "logs", tables)
    (logs / "schema.json").write_text(json.dumps({"schema_version": 1}))

    db = tmp_path / "any.duckdb"
    result = run_ingest(logs, db, max_bad_fraction=1.0)
    assert result.schema_version == 1 and result.summary()["schema_version"] == 1
    three = "expected vertical one of the allowed verticals (people, groups, events)"
    assert _quarantined(db, "documents", "doc_id") == [(900, IN_SET, f"{three}, got 'pages'")]
    assert _quarantined(db, "sessions", "session_id") == [
        (1004, IN_SET, f"{three}, got 'videos'"),
        (1004, REF_VERTICAL, "vertical videos is not in documents"),
    ]

    restricted = run_ingest(logs, tmp_path / "jobs.duckdb", verticals=["jobs"], max_bad_fraction=1.0)
    assert restricted.tables["documents"].loaded == 6 and restricted.tables["documents"].quarantined == 1


def test_numeric_column_values_must_be_finite(tmp_path: Path) -> None:
    tables = jobs_and_papers()
    tables["documents"] = tables["documents"].astype({"price": object})
    tables["documents"]["price"] = ["1e3", "inf", "NaN", "cheap"]
    tables["impressions"] = tables["impressions"].query("doc_id == 1")
    tables["sessions"] = tables["sessions"].query("session_id == 10")
    db = tmp_path / "ebr.duckdb"
    run_ingest(
        write_logs(tmp_path / "logs", tables, fmt="csv"),
        db,
        documents={"columns": COLUMNS},
        max_bad_fraction=1.0,
    )
    assert query(db, "SELECT doc_id, price FROM documents") == [(1, 1000.0)]
    parse = "expect_column_values_to_be_null(type_errors)"
    assert _quarantined(db, "documents", "doc_id") == [
        (2, parse, "price 'inf' does not parse as DOUBLE"),
        (3, parse, "price 'NaN' does not parse as DOUBLE"),
        (4, parse, "price 'cheap' does not parse as DOUBLE"),
    ]


def _declare(**columns: str) -> dict[str, Any]:
    return {"documents": {"columns": columns}}


CONFIG_ERRORS = {  # settings, the start of the one-line error
    "core column": (
        _declare(title="text"),
        "ingest.documents.columns.title: title is a core column of documents",
    ),
    "not an identifier": (
        {"documents": {"columns": {"Body Text": "text"}}},
        "ingest.documents.columns.Body Text: not a plain identifier (a-z, 0-9 and _, starting with a letter)",
    ),
    "unknown type": (
        _declare(body="blob"),
        "ingest.documents.columns.body: unknown type 'blob' (expected text, categorical, numeric)",
    ),
    "check column": (
        _declare(key_conflict="text"),
        "ingest.documents.columns.key_conflict: key_conflict is a column name the ingestion uses itself",
    ),
    "columns not a mapping": (
        {"documents": {"columns": ["body"]}},
        "ingest.documents.columns must map names to kinds, got ['body']",
    ),
    "no verticals": ({"verticals": []}, "ingest.verticals must be null or a non-empty list of names, got []"),
    "verticals not a list": (
        {"verticals": "jobs"},
        "ingest.verticals must be null or a non-empty list of names, got 'jobs'",
    ),
    "vertical without a term": (
        {"verticals": ["jobs", "!!!"]},
        "ingest.verticals: '!!!' is not a vertical name",
    ),
    "text maximum": (
        {"text_max_chars": {"title": 0, "query": None, "name": None}},
        "ingest.text_max_chars.title must be null or >= 1, got 0",
    ),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_errors(case: str, clean_dir: Path, tmp_path: Path) -> None:
    settings, message = CONFIG_ERRORS[case]
    with pytest.raises(IngestConfigError) as raised:
        run_ingest(clean_dir, tmp_path / "ebr.duckdb", **settings)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert not (tmp_path / "ebr.duckdb").exists()


V1_DDL = """
    CREATE TABLE documents (
        doc_id BIGINT NOT NULL, vertical VARCHAR NOT NULL, title VARCHAR NOT NULL,
        city VARCHAR, region VARCHAR, country VARCHAR, user_id BIGINT, parent_doc_id BIGINT,
        event_time TIMESTAMP,
        created_at TIMESTAMP NOT NULL, popularity DOUBLE NOT NULL, PRIMARY KEY (doc_id));
    CREATE TABLE sessions (
        session_id BIGINT NOT NULL, user_id BIGINT NOT NULL, ts TIMESTAMP NOT NULL, vertical VARCHAR NOT NULL,
        query VARCHAR NOT NULL, city VARCHAR, region VARCHAR, country VARCHAR, language VARCHAR,
        PRIMARY KEY (session_id));
    CREATE TABLE impressions (
        session_id BIGINT NOT NULL, doc_id BIGINT NOT NULL, position INTEGER NOT NULL,
        clicked BOOLEAN NOT NULL, PRIMARY KEY (session_id, position));
    INSERT INTO documents VALUES
        (901, 'jobs', 'Nurse', NULL, NULL, NULL, NULL, NULL, NULL, TIMESTAMP '2024-02-01 00:00:00', 1.0);
    INSERT INTO sessions VALUES
        (901, 1, TIMESTAMP '2024-02-01 10:00:00', 'jobs', 'nurse', NULL, NULL, NULL, NULL);
    INSERT INTO impressions VALUES (901, 901, 1, true);
"""


def test_database_of_version_1_is_migrated(tmp_path: Path) -> None:
    """A database created by the version-1 code (NOT NULL created_at, popularity, sessions.user_id) takes
    version-2 rows, and gains the declared columns; a column declared again as another type is refused."""
    db = tmp_path / "ebr.duckdb"
    con = duckdb.connect(str(db))
    con.execute(V1_DDL)
    con.close()

    result = run_ingest(write_logs(tmp_path / "logs", jobs_and_papers()), db, documents={"columns": COLUMNS})
    assert {t: c.loaded for t, c in result.tables.items()} == {
        "documents": 4,
        "sessions": 3,
        "impressions": 4,
    }
    assert query(db, "SELECT count(*) FROM quarantine") == [(0,)]
    documents, sessions = _columns(db, "documents"), _columns(db, "sessions")
    assert documents["created_at"] == ("TIMESTAMP", True) and documents["popularity"] == ("DOUBLE", True)
    assert sessions["user_id"] == ("BIGINT", True) and sessions["ts"] == ("TIMESTAMP", False)
    assert documents["body"] == ("VARCHAR", True)
    assert query(db, "SELECT title, body, popularity FROM documents WHERE doc_id = 901") == [
        ("Nurse", None, 1.0)
    ]

    before = snapshot(db)
    with pytest.raises(IngestConfigError) as raised:
        run_ingest(tmp_path / "logs", db, documents={"columns": {"price": "text"}})
    assert str(raised.value) == (
        "ingest.documents.columns.price: documents.price is DOUBLE in the database, not VARCHAR"
    )
    assert snapshot(db) == before and runs(db)[-1]["status"] == "failed"
