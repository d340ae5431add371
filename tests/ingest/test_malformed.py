"""Malformed input stops the run with a one-line error naming the file, and leaves the database as it was."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from ebr.ingestion.errors import DatabaseUnavailableError, MalformedInputError

from .logs import clean_logs, run_ingest, runs, snapshot, write_logs, write_table


def _text_as_parquet(logs: Path) -> str:
    (logs / "documents.parquet").write_text("doc_id,title\n1,hello\n")
    return "documents.parquet: cannot be read as parquet"


def _empty_file(logs: Path) -> str:
    (logs / "sessions.parquet").unlink()
    (logs / "sessions.csv").write_bytes(b"")
    return "sessions.csv: empty file"


def _header_only(logs: Path) -> str:
    (logs / "sessions.parquet").unlink()
    write_table(logs / "sessions.csv", clean_logs()["sessions"].iloc[:0])
    return "sessions.csv: no rows"


def _missing_column(logs: Path) -> str:
    (logs / "impressions.parquet").unlink()
    write_table(logs / "impressions.jsonl", clean_logs()["impressions"].drop(columns=["clicked"]))
    return "impressions.jsonl: missing columns clicked (found: 'session_id, doc_id, position')"


def _wrong_type(logs: Path) -> str:
    (logs / "impressions.parquet").unlink()
    frame = clean_logs()["impressions"].assign(position=lambda f: [f"#{p}" for p in f["position"]])
    write_table(logs / "impressions.csv", frame)
    return "impressions.csv: column position: no value can be read as INTEGER (first: '#1')"


def _nested_type(logs: Path) -> str:
    frame = clean_logs()["documents"]
    write_table(logs / "documents.parquet", frame.assign(doc_id=[[d] for d in frame["doc_id"]]))
    return "documents.parquet: column doc_id is BIGINT[], which cannot hold BIGINT"


def _bad_json_line(logs: Path) -> str:
    (logs / "impressions.parquet").unlink()
    path = write_table(logs / "impressions.jsonl", clean_logs()["impressions"])
    path.write_text(path.read_text() + "{not json\n")
    return "impressions.jsonl: cannot be read as json"


def _unsupported_schema_version(logs: Path) -> str:
    (logs / "schema.json").write_text(json.dumps({"schema_version": 3}))
    return "schema.json: schema_version 3 is not supported (this platform reads 1, 2)"


def _schema_json_not_json(logs: Path) -> str:
    (logs / "schema.json").write_text("version one")
    return "schema.json: not a JSON object with a schema_version"


def _table_twice(logs: Path) -> str:
    write_table(logs / "sessions.csv", clean_logs()["sessions"])
    return "sessions is given more than once (sessions.csv, sessions.parquet)"


def _unsupported_format(logs: Path) -> str:
    (logs / "impressions.parquet").unlink()
    (logs / "impressions.txt").write_text("session_id doc_id\n")
    return (
        "impressions.txt: not a table file (expected impressions.parquet, impressions.csv, impressions.jsonl"
    )


def _unknown_part(logs: Path) -> str:
    (logs / "impressions.parquet").rename(logs / "part-1.parquet")
    (logs / "impressions").mkdir()
    (logs / "part-1.parquet").rename(logs / "impressions" / "part-1.parquet")
    (logs / "impressions" / "notes.txt").write_text("day 2 follows")
    return "impressions/notes.txt: not a table file"


def _empty_folder(logs: Path) -> str:
    (logs / "impressions.parquet").unlink()
    (logs / "impressions").mkdir()
    (logs / "impressions" / "_SUCCESS").write_text("")
    return "impressions: no table files in the folder"


CASES: dict[str, Callable[[Path], str]] = {
    "not a table": _text_as_parquet,
    "empty file": _empty_file,
    "header only": _header_only,
    "missing column": _missing_column,
    "wrong type": _wrong_type,
    "nested type": _nested_type,
    "bad JSON line": _bad_json_line,
    "unsupported schema_version": _unsupported_schema_version,
    "schema.json not JSON": _schema_json_not_json,
    "table given twice": _table_twice,
    "unsupported format": _unsupported_format,
    "unknown file among parts": _unknown_part,
    "empty table folder": _empty_folder,
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding a day of logs, copied by each test before it tries a malformed one."""
    tmp = tmp_path_factory.mktemp("loaded")
    db = tmp / "ebr.duckdb"
    day1 = clean_logs()
    day1["sessions"] = day1["sessions"].iloc[:2]
    day1["impressions"] = day1["impressions"].query("session_id != 1003")
    run_ingest(write_logs(tmp / "day1", day1), db)
    return db


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_fails_cleanly(case: str, loaded: Path, tmp_path: Path) -> None:
    db = tmp_path / "ebr.duckdb"
    shutil.copy(loaded, db)
    before = snapshot(db)
    logs = write_logs(tmp_path / "logs", clean_logs())  # a new day (session 1003) ...
    expected = CASES[case](logs)  # ... with one malformed part

    with pytest.raises(MalformedInputError) as raised:
        run_ingest(logs, db)

    message = str(raised.value)
    assert expected in message
    assert "\n" not in message
    assert snapshot(db) == before
    last = runs(db)[-1]
    assert last["status"] == "failed" and last["error"] == message


def test_missing_required_table_on_an_empty_database(tmp_path: Path) -> None:
    tables = clean_logs()
    del tables["impressions"]
    logs = write_logs(tmp_path / "logs", tables)
    with pytest.raises(MalformedInputError, match=r"no impressions table \(expected impressions.parquet"):
        run_ingest(logs, tmp_path / "ebr.duckdb")
    assert snapshot(tmp_path / "ebr.duckdb") == {}  # no log table was created


def test_database_that_cannot_be_opened(clean_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ebr.duckdb").write_text("not a database")
    with pytest.raises(DatabaseUnavailableError, match="ebr.duckdb: cannot open the database"):
        run_ingest(clean_dir, tmp_path / "ebr.duckdb")


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(MalformedInputError, match="nowhere: not a folder"):
        run_ingest(tmp_path / "nowhere", tmp_path / "ebr.duckdb")


def test_a_new_day_may_omit_tables_already_loaded(loaded: Path, tmp_path: Path) -> None:
    """Required tables must be in the folder or already in the database: a new day may bring sessions only."""
    db = tmp_path / "ebr.duckdb"
    shutil.copy(loaded, db)
    clean = clean_logs()
    day2 = {
        "sessions": clean["sessions"].iloc[2:],
        "impressions": clean["impressions"].query("session_id == 1003"),
    }
    result = run_ingest(write_logs(tmp_path / "day2", day2), db)
    assert result.tables["sessions"].loaded == 1 and result.tables["impressions"].loaded == 2


def test_one_row_with_a_bad_value_is_quarantined_not_malformed(tmp_path: Path) -> None:
    """A column whose values mostly parse is fine: only the rows that do not parse are quarantined."""
    tables = clean_logs()
    sessions = tables["sessions"].astype({"ts": str})
    tables["sessions"] = pd.concat([sessions, sessions.iloc[[0]].assign(session_id=1004, ts="soon")])
    result = run_ingest(
        write_logs(tmp_path / "logs", tables, fmt="csv"), tmp_path / "ebr.duckdb", max_bad_fraction=0.5
    )
    assert result.tables["sessions"].quarantined == 1 and result.tables["sessions"].loaded == 3
