"""Writing a run: the accepted rows and the quarantine records into the log tables, and the run's record in
`ingest_runs` (a failed run's on its own, after the rollback)."""

from __future__ import annotations

import json
import logging

import duckdb

from ebr.contracts.casting import quote_ident as q
from ebr.contracts.casting import quote_str
from ebr.ingestion.discover import TableSource
from ebr.ingestion.errors import first_line
from ebr.ingestion.results import IngestResult
from ebr.ingestion.stage import RUNS_DDL

log = logging.getLogger(__name__)


def write_rows(con: duckdb.DuckDBPyConnection, run_id: str, sources: list[TableSource]) -> None:
    """Insert the accepted rows and the quarantine records (a record already quarantined is not repeated)."""
    for source in sources:
        t = source.table.name
        cols = ", ".join(q(c) for c in source.table.column_names)
        con.execute(f"INSERT INTO main.{q(t)} ({cols}) SELECT {cols} FROM temp.accepted_{t} ORDER BY row_id")
        for file_id, path in enumerate(source.files):
            con.execute(f"""
                INSERT INTO main.quarantine
                SELECT * FROM (
                    SELECT {quote_str(run_id)} AS run_id, {quote_str(t)} AS table_name,
                           {quote_str(str(path))} AS source_file, s.source_row, b.expectation, b.reason,
                           CAST(to_json(r.record) AS VARCHAR) AS row_json
                    FROM temp.bad_{t} b JOIN temp.stage_{t} s USING (row_id)
                    JOIN temp.raw_{t}_{file_id} r ON r.source_row = s.source_row
                    WHERE s.file_id = {file_id}) n
                WHERE NOT EXISTS (
                    SELECT 1 FROM main.quarantine x
                    WHERE x.table_name = n.table_name AND x.source_file = n.source_file
                      AND x.source_row = n.source_row
                      AND x.expectation = n.expectation AND x.row_json = n.row_json)
                ORDER BY source_row, expectation""")


def record_run(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    """Insert or replace the run's row in `ingest_runs` (a retried run replaces its failed attempt)."""
    con.execute(
        "INSERT OR REPLACE INTO main.ingest_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            result.run_id,
            result.started_at,
            result.finished_at,
            result.status,
            result.logs_dir,
            result.error,
            json.dumps(result.counts_json()),
            json.dumps(result.contracts),
        ],
    )


def record_failed_run(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    """Record a failed run on its own (the run's own transaction was rolled back)."""
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(RUNS_DDL)
        record_run(con, result)
        con.execute("COMMIT")
    except duckdb.Error as e:  # the database itself failed: the original error is the one to report
        log.warning("could not record failed ingestion run %s: %s", result.run_id, first_line(e))
