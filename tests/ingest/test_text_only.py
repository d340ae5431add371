"""A text-only search log (no users, friendships or memberships) ingests: what the text tower trains on."""

from __future__ import annotations

from pathlib import Path

from .logs import clean_logs, query, run_ingest, write_logs


def test_text_only_logs_ingest(tmp_path: Path) -> None:
    """Documents, sessions and impressions alone (no social tables): loaded; user references not checked."""
    clean = clean_logs()
    text_only = {t: clean[t] for t in ("documents", "sessions", "impressions")}
    db = tmp_path / "ebr.duckdb"
    result = run_ingest(write_logs(tmp_path / "logs", text_only, fmt="csv"), db)
    assert {t: c.loaded for t, c in result.tables.items()} == {
        "documents": 6,
        "sessions": 3,
        "impressions": 7,
    }
    for table in ("users", "friendships", "memberships"):
        assert query(db, f"SELECT count(*) FROM {table}")[0][0] == 0
    outcomes = {o["expectation"]: o for o in result.contracts["sessions"]}
    assert outcomes["expect_column_values_to_be_null(ref_user_id)"]["skipped"] == (
        "users not ingested: user_id is not checked"
    )
    assert query(db, "SELECT count(*) FROM quarantine")[0][0] == 0
