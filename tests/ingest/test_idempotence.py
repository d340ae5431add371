"""Ingesting the same files twice changes nothing; a new day of logs adds only its new rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .logs import clean_logs, query, run_ingest, runs, snapshot, write_logs, write_table


def test_same_files_twice_change_nothing(clean_dir: Path, loaded_db: Path) -> None:
    before = snapshot(loaded_db)
    again = run_ingest(clean_dir, loaded_db)
    assert snapshot(loaded_db) == before
    for table, counts in again.tables.items():
        assert counts.loaded == 0 and counts.quarantined == 0, table
        assert counts.skipped_existing == counts.read == len(clean_logs()[table]), table
    assert [r["status"] for r in runs(loaded_db)] == ["succeeded", "succeeded"]


def test_quarantine_is_not_repeated(tmp_path: Path) -> None:
    tables = clean_logs()
    tables["documents"] = pd.concat(
        [tables["documents"], tables["documents"].iloc[[0]].assign(doc_id=7, title="")]
    )
    logs, db = write_logs(tmp_path / "logs", tables), tmp_path / "ebr.duckdb"
    first = run_ingest(logs, db, max_bad_fraction=0.5)
    before = snapshot(db)
    second = run_ingest(logs, db, max_bad_fraction=0.5)
    assert first.tables["documents"].quarantined == second.tables["documents"].quarantined == 1
    assert snapshot(db) == before
    assert len(before["quarantine"]) == 1


def test_new_day_adds_only_new_rows(tmp_path: Path) -> None:
    """Tables as folders of parts: day 2 is another part file, its sessions reference day-1 documents."""
    clean = clean_logs()
    logs, db = tmp_path / "logs", tmp_path / "ebr.duckdb"
    write_logs(logs, {t: f for t, f in clean.items() if t not in ("sessions", "impressions")})
    write_table(logs / "sessions" / "day=1" / "part-0.parquet", clean["sessions"])
    write_table(logs / "impressions" / "day=1" / "part-0.csv", clean["impressions"])
    run_ingest(logs, db)

    sessions2 = clean["sessions"].assign(
        session_id=lambda f: f["session_id"] + 1000, ts=lambda f: f["ts"] + pd.Timedelta(days=1)
    )
    impressions2 = clean["impressions"].assign(session_id=lambda f: f["session_id"] + 1000)
    write_table(logs / "sessions" / "day=2" / "part-0.parquet", sessions2)
    write_table(logs / "impressions" / "day=2" / "part-0.jsonl", impressions2)
    day2 = run_ingest(logs, db)

    assert day2.tables["sessions"].loaded == len(sessions2)
    assert day2.tables["sessions"].skipped_existing == len(clean["sessions"])
    assert day2.tables["impressions"].loaded == len(impressions2)
    assert day2.tables["documents"].loaded == 0
    assert query(db, "SELECT count(*) FROM sessions")[0][0] == 2 * len(clean["sessions"])
    assert query(db, "SELECT count(*) FROM impressions")[0][0] == 2 * len(clean["impressions"])
    assert query(db, "SELECT count(*) FROM quarantine")[0][0] == 0


def test_changed_row_with_a_loaded_key_is_a_conflict(loaded_db: Path, tmp_path: Path) -> None:
    tables = clean_logs()
    tables["documents"] = tables["documents"].assign(
        title=lambda f: f["title"].where(f["doc_id"] != 201, "Renamed")
    )
    result = run_ingest(write_logs(tmp_path / "again", tables), loaded_db, max_bad_fraction=0.5)
    assert result.tables["documents"].quarantined == 1
    [(reason,)] = query(loaded_db, "SELECT reason FROM quarantine WHERE table_name = 'documents'")
    assert reason == "key (doc_id=201) is already loaded with different content"
    assert query(loaded_db, "SELECT title FROM documents WHERE doc_id = 201")[0][0] == "Mini cooper club"


def test_late_reference_lands_once_its_target_arrives(tmp_path: Path) -> None:
    """A quarantined row is not lost: ingested again once the document it references is loaded, it lands."""
    clean = clean_logs()
    logs, db = tmp_path / "logs", tmp_path / "ebr.duckdb"
    early = clean | {"documents": clean["documents"].query("doc_id != 301")}
    write_logs(logs, early)
    first = run_ingest(logs, db, max_bad_fraction=0.5)
    assert first.tables["impressions"].quarantined == 1  # session 1002 shows doc 301, not loaded yet
    assert first.tables["memberships"].quarantined == 1  # user 2 attends event 301
    write_table(logs / "documents.parquet", clean["documents"])
    second = run_ingest(logs, db, max_bad_fraction=0.5)
    assert second.tables["documents"].loaded == 1
    for table in ("impressions", "memberships"):
        assert second.tables[table].loaded == 1 and second.tables[table].quarantined == 0
