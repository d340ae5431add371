"""Ingestion: a folder of log tables -> the DuckDB file, validated by the data contracts, in one transaction.

`ingest_logs` is the whole step as a plain function (ebr/flows/ingest.py wraps it in a Prefect flow), over
the modules of this package:
1. `discover`: find the tables in the folder (`<table>.parquet|.csv|.jsonl` or a folder `<table>/` of part
   files) and its schema_version (1 or 2);
2. `stage`: read each file into a staging table with its source row and typed columns (documents with the
   extra columns declared in `ingest.documents.columns`); a file that is not a table, is empty, lacks
   required columns or holds a column of the wrong type stops the run (MalformedInputError);
3. `validate`: per table, in dependency order, skip rows identical to loaded ones, compute the cross-row
   checks, run the suite with Great Expectations, and split the rows into accepted and quarantined;
4. `validate`: if any table's quarantined share passes `max_bad_fraction`, stop (BadShareError);
5. `stage`, `write`: create or migrate the tables, insert the accepted rows, the quarantine records and the
   run record, and commit.
Any failure rolls the transaction back: the log tables and the quarantine are left as they were, and the
failed run is recorded in `ingest_runs` with its error. See docs/ingestion.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from omegaconf import DictConfig

from ebr.contracts import ContractRunner
from ebr.contracts.casting import quote_ident as q
from ebr.contracts.checks import register_functions
from ebr.ingestion.config import IngestConfig
from ebr.ingestion.discover import expected_files, find_sources, read_schema_version
from ebr.ingestion.errors import DatabaseUnavailableError, IngestError, MalformedInputError, first_line
from ebr.ingestion.results import IngestResult
from ebr.ingestion.stage import create_tables, stage_source, typed_columns
from ebr.ingestion.validate import check_bad_share, key_conflicts, scalar, validate_table
from ebr.ingestion.write import record_failed_run, record_run, write_rows
from ebr.runs import new_run_id
from ebr.schema import LOG_TABLES


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def ingest_logs(
    logs_dir: Path, db_path: Path, cfg: Mapping[str, Any] | DictConfig, run_id: str | None = None
) -> IngestResult:
    """Validate the log tables in `logs_dir` and load them into the DuckDB file `db_path`, all or nothing.

    Returns the run's counts and contract results. Raises IngestError with a one-line message
    (MalformedInputError, BadShareError, IngestConfigError, DatabaseUnavailableError); any failure after the
    database is open rolls back and records the failed run in `ingest_runs`.
    """
    config = IngestConfig.from_cfg(cfg)
    logs_dir, db_path = Path(logs_dir).resolve(), Path(db_path).resolve()
    result = IngestResult(
        run_id=run_id or new_run_id("ingest"),
        logs_dir=str(logs_dir),
        db_path=str(db_path),
        started_at=_now(),
        document_columns=dict(config.document_columns),
    )
    db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as e:
        raise DatabaseUnavailableError(f"{db_path}: cannot open the database: {first_line(e)}") from e
    try:
        con.execute("SET TimeZone = 'UTC'")
        register_functions(con)
        _ingest(con, logs_dir, config, result)
    except Exception as e:
        result.status, result.finished_at = "failed", _now()
        result.error = str(e) if isinstance(e, IngestError) else f"{type(e).__name__}: {first_line(e)}"
        record_failed_run(con, result)
        if isinstance(e, IngestError):
            e.result = result
        raise
    finally:
        con.close()
    return result


def _ingest(
    con: duckdb.DuckDBPyConnection, logs_dir: Path, config: IngestConfig, result: IngestResult
) -> None:
    """The run under the contracts of the folder's schema_version; a failed run keeps the results so far."""
    result.schema_version = read_schema_version(logs_dir, config.outside_links)
    runner = ContractRunner(
        config.suite_params(result.schema_version), sample_failures=config.sample_failures
    )
    try:
        _load(con, runner, logs_dir, config, result)
    finally:
        result.contracts = runner.results()
        result.validations = runner.validations()  # for the Data Docs (ebr.flows.ingest.publish_data_docs)


def _load(
    con: duckdb.DuckDBPyConnection,
    runner: ContractRunner,
    logs_dir: Path,
    config: IngestConfig,
    result: IngestResult,
) -> None:
    tables = config.log_tables()
    sources = find_sources(logs_dir, tables, config.outside_links)
    result.files = {s.table.name: [str(p) for p in s.files] for s in sources}
    given, loaded = {s.table.name for s in sources}, _loaded_tables(con)
    missing = [t.name for t in tables if t.required and t.name not in given | loaded]
    if missing:
        raise MalformedInputError(
            f"{logs_dir}: no {', '.join(missing)} table "
            f"(expected {expected_files(missing[0])}) and none loaded before"
        )
    # Read everything first, into temp tables only: a malformed file stops the run before any validation.
    # (Outside the transaction: rows of a table created inside it get transaction-local rowids.)
    for source in sources:
        stage_source(con, runner, source)
    con.execute("BEGIN TRANSACTION")
    try:
        create_tables(con, tables)
        for table in tables:
            con.execute(f"CREATE TEMP TABLE accepted_{table.name} (row_id BIGINT, {typed_columns(table)})")
        known = frozenset(given | loaded)
        for source in sources:  # LOG_TABLES order: a table's references point to tables validated before it
            result.tables[source.table.name] = validate_table(
                con, runner, source.table, known, config.validation_batch_rows
            )
            conflicts = key_conflicts(con, source.table)
            if conflicts is not None:
                result.key_conflicts[source.table.name] = conflicts
        result.contracts = runner.results()
        check_bad_share(result, config.max_bad_fraction)
        write_rows(con, result.run_id, sources)
        result.status, result.finished_at = "succeeded", _now()
        record_run(con, result)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _loaded_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The log tables that already hold rows in the database."""
    existing = {
        r[0]
        for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()
    }
    return {
        t.name
        for t in LOG_TABLES
        if t.name in existing and scalar(con, f"SELECT count(*) FROM main.{q(t.name)}")
    }
