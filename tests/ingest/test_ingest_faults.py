"""Fault injection into an ingestion into an existing database: whichever write fails, the database keeps its
last good state (log tables and quarantine as they were) and a retry of the same run succeeds.

The ingestion makes no file-system call from Python (tests/faults.py counts none): every write is DuckDB's,
made by SQL statements inside one transaction. So the faults are injected at those statements: the N-th
`execute` of the run's connection fails as a full disk would (duckdb.IOException), for every N, once
(`sticky=False`: the failed run is still recorded) or from N on (`sticky=True`: nothing more can be written,
not even the rollback or the failed run's record).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from faults import count_calls, inject

from ebr.ingestion.ingest import ingest_logs
from ebr.ingestion.results import IngestResult

from .logs import clean_logs, load_cfg, runs, snapshot, write_logs

RUN_ID = "ingest-faults"


class _Statements:
    """Counts the SQL statements of the connections opened inside `failing_statements`; fails one of them."""

    def __init__(self, fail_at: int | None, sticky: bool) -> None:
        self.fail_at, self.sticky = fail_at, sticky
        self.sql: list[str] = []
        self.failed: str | None = None

    def hit(self, sql: str) -> None:
        self.sql.append(sql)
        n = len(self.sql)
        if self.fail_at is not None and (n == self.fail_at or (self.sticky and n > self.fail_at)):
            self.failed = self.failed or sql
            raise duckdb.IOException(f"No space left on device (injected at statement {n})")


class _Connection:
    """A DuckDB connection whose `execute` goes through `_Statements.hit` first."""

    def __init__(self, real: duckdb.DuckDBPyConnection, statements: _Statements) -> None:
        self._real, self._statements = real, statements

    def execute(self, sql: str, *args: Any) -> duckdb.DuckDBPyConnection:
        self._statements.hit(" ".join(sql.split())[:80])
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def failing_statements(fail_at: int | None = None, sticky: bool = False) -> Iterator[_Statements]:
    """Count (and with `fail_at`, fail) the statements of the DuckDB connections opened in the block."""
    statements, connect = _Statements(fail_at, sticky), duckdb.connect
    duckdb.connect = lambda *a, **k: _Connection(connect(*a, **k), statements)  # type: ignore[assignment]
    try:
        yield statements
    finally:
        duckdb.connect = connect


def _day2(tmp_path: Path) -> Path:
    """New sessions and impressions, one session (and so its impressions) quarantined."""
    clean = clean_logs()
    sessions = clean["sessions"].assign(session_id=[5001, 5002, 5003])
    sessions["vertical"] = ["people", "videos", "people"]
    impressions = clean["impressions"].assign(session_id=lambda f: f["session_id"] + 4000)
    return write_logs(tmp_path / "day2", {"sessions": sessions, "impressions": impressions})


def _ingest(logs: Path, db: Path) -> IngestResult:
    return ingest_logs(logs, db, load_cfg(max_bad_fraction=0.5), run_id=RUN_ID)


@pytest.fixture
def fresh_db(tmp_path: Path, loaded_db: Path) -> Iterator[Any]:
    """A factory of copies of the loaded database (the last good state)."""
    good = tmp_path / "good.duckdb"
    shutil.move(loaded_db, good)

    def fresh() -> Path:
        shutil.copy(good, loaded_db)
        return loaded_db

    yield fresh


def test_no_python_level_file_writes(tmp_path: Path, fresh_db: Any) -> None:
    """Every file-system call from Python fails in turn (tests/faults.py): there are none to fail today."""
    logs = _day2(tmp_path)
    n = count_calls(lambda: _ingest(logs, fresh_db()))
    for fail_at in range(1, n + 1):
        db = fresh_db()
        before = snapshot(db)
        with inject(fail_at) as faults, pytest.raises(OSError):
            _ingest(logs, db)
        assert faults.failed, faults.calls
        assert snapshot(db) == before
    assert n == 0  # if this changes, the sweep above covers the new writes


@pytest.mark.parametrize(
    "sticky", [False, pytest.param(True, marks=pytest.mark.e2e)], ids=["once", "from-then-on"]
)  # each sweep: ~100 statements, two ingestions each (~50 s)
def test_every_failing_statement_leaves_the_last_good_state(
    tmp_path: Path, fresh_db: Any, sticky: bool
) -> None:
    logs = _day2(tmp_path)
    reference = fresh_db()
    with failing_statements() as counted:
        _ingest(logs, reference)
    expected, expected_runs = snapshot(reference), runs(reference)
    assert expected_runs[-1]["status"] == "succeeded" and len(counted.sql) > 50
    assert expected != snapshot(fresh_db())  # the run changes the database: there is something to lose

    for fail_at in range(1, len(counted.sql) + 1):
        db = fresh_db()
        before, runs_before = snapshot(db), runs(db)
        with failing_statements(fail_at, sticky) as statements, pytest.raises(Exception, match="injected at"):
            _ingest(logs, db)
        assert statements.failed == counted.sql[fail_at - 1]
        assert snapshot(db) == before, f"statement {fail_at} ({statements.failed}) changed the database"
        after = runs(db)
        assert after[: len(runs_before)] == runs_before
        assert [r["status"] for r in after[len(runs_before) :]] in ([], ["failed"])
        assert _ingest(logs, db).status == "succeeded"  # the retry
        assert snapshot(db) == expected
        assert [r["status"] for r in runs(db)] == [r["status"] for r in expected_runs]
