"""All or nothing: too many bad rows, a failure mid-run, a killed process: the database stays as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import ebr.ingestion.ingest
from ebr.home import PROJECT_ROOT
from ebr.ingestion.errors import BadShareError, IngestConfigError

from .logs import clean_logs, run_ingest, runs, snapshot, write_logs


def _day2(tmp_path: Path, bad_sessions: int) -> Path:
    """A second day: 4 new sessions and their impressions, `bad_sessions` of them with an unknown vertical."""
    clean = clean_logs()
    sessions = clean["sessions"].iloc[[0] * 4].assign(session_id=[2001, 2002, 2003, 2004])
    sessions["vertical"] = ["videos"] * bad_sessions + ["people"] * (4 - bad_sessions)
    impressions = pd.DataFrame(
        {"session_id": [2001, 2002, 2003, 2004], "doc_id": 101, "position": 1, "clicked": True}
    )
    return write_logs(tmp_path / "day2", {"sessions": sessions, "impressions": impressions})


def test_bad_share_above_threshold_fails_and_loads_nothing(loaded_db: Path, tmp_path: Path) -> None:
    before = snapshot(loaded_db)
    with pytest.raises(BadShareError) as raised:
        run_ingest(_day2(tmp_path, bad_sessions=2), loaded_db, max_bad_fraction=0.25)
    message = str(raised.value)
    assert message.startswith("sessions: 2 of 4 rows (50.0%) failed their contract")
    assert "impressions: 2 of 4 rows (50.0%)" in message  # their sessions are quarantined
    assert "above max_bad_fraction 0.25; nothing loaded" in message and "\n" not in message
    assert snapshot(loaded_db) == before
    failed = runs(loaded_db)[-1]
    assert failed["status"] == "failed" and failed["error"] == message
    assert failed["counts"]["tables"]["sessions"] == {
        "read": 4,
        "loaded": 2,
        "quarantined": 2,
        "skipped_existing": 0,
    }
    assert raised.value.result is not None and raised.value.result.tables["sessions"].quarantined == 2


def test_bad_share_at_threshold_passes(loaded_db: Path, tmp_path: Path) -> None:
    result = run_ingest(_day2(tmp_path, bad_sessions=1), loaded_db, max_bad_fraction=0.25)
    assert result.tables["sessions"].loaded == 3 and result.tables["sessions"].quarantined == 1


def test_config_out_of_range_is_refused(clean_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IngestConfigError, match=r"ingest.max_bad_fraction must be in \[0, 1\], got 1.5"):
        run_ingest(clean_dir, tmp_path / "ebr.duckdb", max_bad_fraction=1.5)


def test_failure_after_rows_were_written_rolls_back(
    loaded_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = ebr.ingestion.ingest.write_rows

    def write_then_fail(con, run_id, sources):  # noqa: ANN001
        write(con, run_id, sources)
        assert con.execute("SELECT count(*) FROM sessions").fetchone()[0] == 7  # rows are in, uncommitted
        raise OSError("disk full")

    monkeypatch.setattr(ebr.ingestion.ingest, "write_rows", write_then_fail)
    before = snapshot(loaded_db)
    with pytest.raises(OSError, match="disk full"):
        run_ingest(_day2(tmp_path, bad_sessions=0), loaded_db)
    assert snapshot(loaded_db) == before
    assert runs(loaded_db)[-1]["error"] == "OSError: disk full"


@pytest.mark.e2e  # a second Python process with Great Expectations: ~10 s
def test_killed_process_leaves_the_database_as_it_was(loaded_db: Path, tmp_path: Path) -> None:
    """A process killed between writing rows and committing (os._exit: no cleanup at all)."""
    before = snapshot(loaded_db)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        import ebr.ingestion.ingest
        from tests.ingest.logs import load_cfg
        def die(con, result):
            print(con.execute("SELECT count(*) FROM sessions").fetchone()[0], flush=True)
            os._exit(137)
        ebr.ingestion.ingest.record_run = die
        ebr.ingestion.ingest.ingest_logs({str(_day2(tmp_path, 0))!r}, {str(loaded_db)!r}, load_cfg())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 137, done.stderr
    assert done.stdout.strip() == "7"  # the new sessions were written inside the transaction when it died
    assert snapshot(loaded_db) == before
    assert [r["status"] for r in runs(loaded_db)] == ["succeeded"]
