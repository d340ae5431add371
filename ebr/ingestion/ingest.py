"""Ingestion: a folder of log tables -> the DuckDB file, validated by the data contracts, in one transaction.

`ingest_logs` is the whole step as a plain function (ebr/flows/ingest.py wraps it in a Prefect flow):
1. find the tables in the folder (`<table>.parquet|.csv|.jsonl` or a folder `<table>/` of part files);
2. read each file into a staging table with its source row and typed columns; a file that is not a table,
   is empty, lacks required columns or holds a column of the wrong type stops the run (MalformedInputError);
3. per table, in dependency order: skip rows identical to loaded ones, compute the cross-row checks, run the
   suite with Great Expectations, and split the rows into accepted and quarantined;
4. if any table's quarantined share passes `max_bad_fraction`, stop (BadShareError);
5. insert the accepted rows, the quarantine records and the run record, and commit.
Any failure rolls the transaction back: the log tables and the quarantine are left as they were, and the
failed run is recorded in `ingest_runs` with its error. See docs/ingestion.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ebr.contracts import ContractRunner, load_contract
from ebr.contracts.casting import cast_sql, quote_str
from ebr.contracts.casting import quote_ident as q
from ebr.contracts.checks import CheckContext, check_query, skip_reason
from ebr.runs import new_run_id
from ebr.schema import LOG_TABLES, SCHEMA_VERSION, Column, Table

# Table file suffixes and the DuckDB reader of each (compressed CSV/JSONL are read transparently).
FORMATS = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".jsonl": "json", ".jsonl.gz": "json"}

log = logging.getLogger(__name__)

_RUNS_DDL = """CREATE TABLE IF NOT EXISTS main.ingest_runs (
    run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    logs_dir VARCHAR, error VARCHAR, counts_json VARCHAR, contracts_json VARCHAR)"""
_QUARANTINE_DDL = """CREATE TABLE IF NOT EXISTS main.quarantine (
    run_id VARCHAR, table_name VARCHAR, source_file VARCHAR, source_row BIGINT,
    expectation VARCHAR, reason VARCHAR, row_json VARCHAR)"""


class IngestError(Exception):
    """A failed ingestion, with a one-line message; `result` holds the run's counts when they exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.result: IngestResult | None = None


class MalformedInputError(IngestError):
    """The input is not a valid set of log tables (a file that is not a table, empty, wrong columns...)."""


class BadShareError(IngestError):
    """Too many rows failed their contract: the share of quarantined rows passed `max_bad_fraction`."""


class IngestConfigError(IngestError):
    """A setting of conf/ingest is out of range."""


class DatabaseUnavailableError(IngestError):
    """The DuckDB file cannot be opened (locked by another process, unreadable, not a DuckDB file)."""


@dataclass(frozen=True)
class IngestConfig:
    """conf/ingest/default.yaml, checked."""

    max_bad_fraction: float
    validation_batch_rows: int
    text_max_chars: dict[str, int]
    sample_failures: int

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | DictConfig) -> IngestConfig:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        config = cls(
            max_bad_fraction=float(raw["max_bad_fraction"]),
            validation_batch_rows=int(raw["validation_batch_rows"]),
            text_max_chars={k: int(v) for k, v in raw["text_max_chars"].items()},
            sample_failures=int(raw["sample_failures"]),
        )
        if not 0.0 <= config.max_bad_fraction <= 1.0:
            raise IngestConfigError(
                f"ingest.max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}"
            )
        if config.validation_batch_rows < 1:
            raise IngestConfigError(
                f"ingest.validation_batch_rows must be >= 1, got {config.validation_batch_rows}"
            )
        if min(config.text_max_chars.values(), default=1) < 1:
            raise IngestConfigError(f"ingest.text_max_chars must be >= 1, got {config.text_max_chars}")
        return config

    def suite_params(self) -> dict[str, int]:
        """The values of the suites' `$PARAMETER`s."""
        return {f"{name}_max_chars": n for name, n in self.text_max_chars.items()}


@dataclass
class TableCounts:
    read: int = 0  # rows in the input files
    loaded: int = 0  # rows inserted
    quarantined: int = 0  # rows that failed an expectation (one quarantine record per failed expectation)
    skipped_existing: int = 0  # rows identical to a loaded row, or to an earlier row of this input


@dataclass
class IngestResult:
    run_id: str
    logs_dir: str
    db_path: str
    started_at: datetime
    status: str = "running"  # running | succeeded | failed
    finished_at: datetime | None = None
    schema_version: int = SCHEMA_VERSION
    files: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, TableCounts] = field(default_factory=dict)
    contracts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None

    def counts_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "files": self.files,
            "tables": {t: asdict(c) for t, c in self.tables.items()},
        }

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary (the last line of `ebr ingest --json`)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "logs_dir": self.logs_dir,
            "db_path": self.db_path,
            "schema_version": self.schema_version,
            "tables": {t: asdict(c) for t, c in self.tables.items()},
            "failed_expectations": {
                t: [o["expectation"] for o in outcomes if not o["success"]]
                for t, outcomes in self.contracts.items()
            },
        }


@dataclass(frozen=True)
class TableSource:
    table: Table
    files: tuple[Path, ...]


def _format(path: Path) -> str | None:
    return next((fmt for suffix, fmt in FORMATS.items() if path.name.endswith(suffix)), None)


def _expected(name: str) -> str:
    return f"{name}.parquet, {name}.csv, {name}.jsonl or a folder {name}/ of such files"


def read_schema_version(logs_dir: Path) -> int:
    """The folder's schema_version (schema.json, as the simulator writes it); absent means the current one."""
    path = logs_dir / "schema.json"
    if not path.exists():
        return SCHEMA_VERSION
    try:
        version = json.loads(path.read_text()).get("schema_version")
    except (json.JSONDecodeError, AttributeError):
        raise MalformedInputError(f"{path}: not a JSON object with a schema_version") from None
    if version != SCHEMA_VERSION:
        raise MalformedInputError(
            f"{path}: schema_version {version!r} is not supported (this platform reads {SCHEMA_VERSION})"
        )
    return version


def find_sources(logs_dir: Path) -> list[TableSource]:
    """The log tables present in `logs_dir`, in dependency order; other files (ground_truth/, reports)
    are ignored."""
    if not logs_dir.is_dir():
        raise MalformedInputError(f"{logs_dir}: not a folder")
    sources = []
    for table in LOG_TABLES:
        name = table.name
        candidates = [p for p in sorted(logs_dir.glob(f"{name}.*")) if p.is_file()]
        unknown = [p for p in candidates if p.name not in {name + suffix for suffix in FORMATS}]
        if unknown:
            raise MalformedInputError(f"{unknown[0]}: not a table file (expected {_expected(name)})")
        folder = logs_dir / name
        tables = candidates + ([folder] if folder.is_dir() else [])
        if len(tables) > 1:
            raise MalformedInputError(
                f"{logs_dir}: {name} is given more than once ({', '.join(p.name for p in tables)})"
            )
        if not tables:
            continue
        if tables[0].is_dir():
            parts = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
            unknown = [p for p in parts if not _format(p)]
            if unknown:
                raise MalformedInputError(
                    f"{unknown[0]}: not a table file (expected .parquet, .csv or .jsonl)"
                )
            if not parts:
                raise MalformedInputError(f"{folder}: no table files in the folder")
            sources.append(TableSource(table, tuple(parts)))
        else:
            sources.append(TableSource(table, (tables[0],)))
    return sources


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """The log tables (exactly the input schema, keys enforced), quarantine and ingest_runs, if missing."""
    for table in LOG_TABLES:
        cols = ", ".join(
            f"{q(c.name)} {c.sql_type}{'' if c.nullable else ' NOT NULL'}" for c in table.columns
        )
        key = ", ".join(q(k) for k in table.key)
        con.execute(f"CREATE TABLE IF NOT EXISTS main.{q(table.name)} ({cols}, PRIMARY KEY ({key}))")
    con.execute(_QUARANTINE_DDL)
    con.execute(_RUNS_DDL)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchone()[0]


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _reader(path: Path) -> str:
    p = quote_str(str(path))
    return {
        "parquet": f"read_parquet({p})",
        "csv": f"read_csv({p}, header = true, all_varchar = true)",
        "json": f"read_json({p}, format = 'newline_delimited', sample_size = -1)",
    }[_format(path)]


def _stage(con: duckdb.DuckDBPyConnection, runner: ContractRunner, source: TableSource) -> None:
    """Read every file of a table into temp.stage_<table>: row_id, file_id, source_row, the typed columns
    and type_errors (which values did not parse).

    The raw files stay as temp.raw_<table>_<file_id> (the quarantine keeps a bad row as it was read)."""
    table = source.table
    t = table.name
    typed_ddl = ", ".join(f"{q(c.name)} {c.sql_type}" for c in table.columns)
    con.execute(
        f"CREATE TEMP TABLE stage_{t} "
        f"(row_id BIGINT, file_id INTEGER, source_row BIGINT, {typed_ddl}, type_errors VARCHAR)"
    )
    offset = 0
    for file_id, path in enumerate(source.files):
        if path.stat().st_size == 0:
            raise MalformedInputError(f"{path}: empty file")
        raw = f"temp.raw_{t}_{file_id}"
        try:
            con.execute(f"CREATE TEMP TABLE raw_{t}_{file_id} AS SELECT * FROM {_reader(path)}")
        except duckdb.Error as e:
            raise MalformedInputError(
                f"{path}: cannot be read as {_format(path)}: {_first_line(e)}"
            ) from None
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {raw})").fetchall())
        problems = runner.check_file(t, con.execute(f"SELECT * FROM {raw} LIMIT 1").df())
        if problems:
            raise MalformedInputError(f"{path}: {'; '.join(problems)}")
        typed, errors = [], []
        for c in table.columns:
            if c.name not in types:  # an optional (nullable) column the file does not have
                typed.append(f"CAST(NULL AS {c.sql_type}) AS {q(c.name)}")
                continue
            expr = cast_sql(q(c.name), types[c.name], c.sql_type)
            if expr is None:
                raise MalformedInputError(
                    f"{path}: column {c.name} is {types[c.name]}, which cannot hold {c.sql_type}"
                )
            typed.append(f"{expr} AS {q(c.name)}")
            typed.append(f"{q(c.name)} AS {q('raw.' + c.name)}")
            raw_value = q("raw." + c.name)
            if types[c.name] == "JSON":  # a JSON string's text, without its quotes
                raw_value = f"json_extract_string({raw_value}, '$')"
            raw_text = f"left(CAST({raw_value} AS VARCHAR), 60)"
            errors.append(
                f"CASE WHEN {q('raw.' + c.name)} IS NOT NULL AND {q(c.name)} IS NULL "
                f"THEN {quote_str(c.name + ' ')} || {quote_str(chr(39))} || {raw_text} || "
                f"{quote_str(chr(39) + ' does not parse as ' + c.sql_type)} END"
            )
        columns = ", ".join(q(c.name) for c in table.columns)
        con.execute(
            f"INSERT INTO temp.stage_{t} SELECT {offset} + rid, {file_id}, rid + 1, {columns}, "
            f"NULLIF(concat_ws('; ', {', '.join(errors)}), '') "
            f"FROM (SELECT rowid AS rid, {', '.join(typed)} FROM {raw})"
        )
        _reject_untyped_columns(con, path, table, raw, file_id, [c for c in table.columns if c.name in types])
        offset += _scalar(con, f"SELECT count(*) FROM {raw}")


def _reject_untyped_columns(
    con: duckdb.DuckDBPyConnection, path: Path, table: Table, raw: str, file_id: int, present: list[Column]
) -> None:
    """A column none of whose values parses has the wrong type: the file is malformed, not its rows."""
    raw_counts = con.execute(
        f"SELECT {', '.join(f'count({q(c.name)})' for c in present)} FROM {raw}"
    ).fetchone()
    typed_counts = con.execute(
        f"SELECT {', '.join(f'count({q(c.name)})' for c in present)} "
        f"FROM temp.stage_{table.name} WHERE file_id = {file_id}"
    ).fetchone()
    for c, n_raw, n_typed in zip(present, raw_counts, typed_counts, strict=True):
        if n_raw and not n_typed:
            first = _scalar(
                con, f"SELECT CAST({q(c.name)} AS VARCHAR) FROM {raw} WHERE {q(c.name)} IS NOT NULL LIMIT 1"
            )
            raise MalformedInputError(
                f"{path}: column {c.name}: no value can be read as {c.sql_type} (first: {first!r})"
            )


def _validate(
    con: duckdb.DuckDBPyConnection,
    runner: ContractRunner,
    table: Table,
    known: frozenset[str],
    batch_rows: int,
) -> TableCounts:
    """Split temp.stage_<table> into skipped rows, quarantined (temp.bad_<table>: row_id, expectation, reason)
    and accepted (temp.accepted_<table>)."""
    t = table.name
    stage = f"temp.stage_{t}"
    cols = ", ".join(q(c) for c in table.column_names)
    same = " AND ".join(
        f"d.{q(c)} = s.{q(c)}" if c in table.key else f"d.{q(c)} IS NOT DISTINCT FROM s.{q(c)}"
        for c in table.column_names
    )
    con.execute(f"""
        CREATE TEMP TABLE skipped_{t} AS
        SELECT row_id FROM (
            SELECT row_id, row_number() OVER (PARTITION BY {cols} ORDER BY row_id) AS n
            FROM {stage} WHERE type_errors IS NULL)
        WHERE n > 1
        UNION
        SELECT s.row_id FROM {stage} s
        WHERE s.type_errors IS NULL AND EXISTS (SELECT 1 FROM main.{q(t)} d WHERE {same})""")
    con.execute(f"""
        CREATE TEMP TABLE batch_{t} AS SELECT row_id, {cols} FROM {stage}
        WHERE type_errors IS NULL AND row_id NOT IN (SELECT row_id FROM temp.skipped_{t})""")

    ctx = CheckContext(table=t, batch=f"temp.batch_{t}", accepted=lambda p: f"temp.accepted_{p}", known=known)
    checks, skipped_checks = [], []
    for e in load_contract(t).checks:
        why = skip_reason(e.meta, ctx)
        if why:
            runner.skip(t, e, why)
            skipped_checks.append(e.name)
            continue
        con.execute(f"CREATE TEMP TABLE check_{t}_{e.column} AS {check_query(e.column, e.meta, ctx)}")
        checks.append(e.column)

    flags = "".join(f", {q(c)}" for c in checks)
    joins = " ".join(f"LEFT JOIN temp.check_{t}_{c} USING (row_id)" for c in checks)
    n_rows = _scalar(con, f"SELECT count(*) FROM {stage}")
    failures = []
    for lo in range(0, n_rows, batch_rows):
        frame = con.execute(f"""
            SELECT row_id, {cols}, type_errors{flags} FROM {stage} {joins}
            WHERE row_id >= {lo} AND row_id < {lo + batch_rows}
              AND row_id NOT IN (SELECT row_id FROM temp.skipped_{t})
            ORDER BY row_id""").df()
        failures += runner.check_rows(t, frame, skip=skipped_checks)

    bad = pd.DataFrame(failures, columns=["row_id", "expectation", "reason"])
    con.register("bad_rows", bad)
    con.execute(f"CREATE TEMP TABLE bad_{t} AS SELECT * FROM bad_rows")
    con.unregister("bad_rows")
    con.execute(
        f"INSERT INTO temp.accepted_{t} SELECT * FROM temp.batch_{t} "
        f"WHERE row_id NOT IN (SELECT row_id FROM temp.bad_{t})"
    )
    return TableCounts(
        read=n_rows,
        loaded=_scalar(con, f"SELECT count(*) FROM temp.accepted_{t}"),
        quarantined=_scalar(con, f"SELECT count(DISTINCT row_id) FROM temp.bad_{t}"),
        skipped_existing=_scalar(con, f"SELECT count(*) FROM temp.skipped_{t}"),
    )


def _write(con: duckdb.DuckDBPyConnection, run_id: str, sources: list[TableSource]) -> None:
    """Insert the accepted rows and the quarantine records (a record already quarantined is not repeated)."""
    for source in sources:
        t = source.table.name
        cols = ", ".join(q(c) for c in source.table.column_names)
        con.execute(f"INSERT INTO main.{q(t)} SELECT {cols} FROM temp.accepted_{t} ORDER BY row_id")
        for file_id, path in enumerate(source.files):
            con.execute(f"""
                INSERT INTO main.quarantine
                SELECT * FROM (
                    SELECT {quote_str(run_id)} AS run_id, {quote_str(t)} AS table_name,
                           {quote_str(str(path))} AS source_file, s.source_row, b.expectation, b.reason,
                           CAST(to_json(r) AS VARCHAR) AS row_json
                    FROM temp.bad_{t} b JOIN temp.stage_{t} s USING (row_id)
                    JOIN temp.raw_{t}_{file_id} r ON r.rowid + 1 = s.source_row
                    WHERE s.file_id = {file_id}) n
                WHERE NOT EXISTS (
                    SELECT 1 FROM main.quarantine x
                    WHERE x.table_name = n.table_name AND x.source_file = n.source_file
                      AND x.source_row = n.source_row
                      AND x.expectation = n.expectation AND x.row_json = n.row_json)
                ORDER BY source_row, expectation""")


def _check_bad_share(result: IngestResult, max_bad_fraction: float) -> None:
    over = [
        f"{t}: {c.quarantined} of {c.read} rows ({c.quarantined / c.read:.1%}) failed their contract"
        for t, c in result.tables.items()
        if c.read and c.quarantined / c.read > max_bad_fraction
    ]
    if over:
        raise BadShareError(
            f"{'; '.join(over)}, above max_bad_fraction {max_bad_fraction}; "
            f"nothing loaded (run {result.run_id})"
        )


def _record_run(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
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
        run_id=run_id or new_run_id("ingest"), logs_dir=str(logs_dir), db_path=str(db_path), started_at=_now()
    )
    db_path.parent.mkdir(parents=True, exist_ok=True)
    runner = ContractRunner(config.suite_params(), sample_failures=config.sample_failures)
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as e:
        raise DatabaseUnavailableError(f"{db_path}: cannot open the database: {_first_line(e)}") from e
    try:
        con.execute("SET TimeZone = 'UTC'")
        _ingest(con, runner, logs_dir, config, result)
    except Exception as e:
        result.status, result.finished_at = "failed", _now()
        result.error = str(e) if isinstance(e, IngestError) else f"{type(e).__name__}: {_first_line(e)}"
        result.contracts = runner.results()
        _record_failed_run(con, result)
        if isinstance(e, IngestError):
            e.result = result
        raise
    finally:
        con.close()
    return result


def _ingest(
    con: duckdb.DuckDBPyConnection,
    runner: ContractRunner,
    logs_dir: Path,
    config: IngestConfig,
    result: IngestResult,
) -> None:
    result.schema_version = read_schema_version(logs_dir)
    sources = find_sources(logs_dir)
    result.files = {s.table.name: [str(p) for p in s.files] for s in sources}
    given, loaded = {s.table.name for s in sources}, _loaded_tables(con)
    missing = [t.name for t in LOG_TABLES if t.required and t.name not in given | loaded]
    if missing:
        raise MalformedInputError(
            f"{logs_dir}: no {', '.join(missing)} table "
            f"(expected {_expected(missing[0])}) and none loaded before"
        )
    # Read everything first, into temp tables only: a malformed file stops the run before any validation.
    # (Outside the transaction: rows of a table created inside it get transaction-local rowids.)
    for source in sources:
        _stage(con, runner, source)
    con.execute("BEGIN TRANSACTION")
    try:
        create_tables(con)
        for table in LOG_TABLES:
            con.execute(
                f"CREATE TEMP TABLE accepted_{table.name} AS "
                f"SELECT CAST(NULL AS BIGINT) AS row_id, * FROM main.{q(table.name)} WHERE false"
            )
        known = frozenset(given | loaded)
        for source in sources:  # LOG_TABLES order: a table's references point to tables validated before it
            result.tables[source.table.name] = _validate(
                con, runner, source.table, known, config.validation_batch_rows
            )
        result.contracts = runner.results()
        _check_bad_share(result, config.max_bad_fraction)
        _write(con, result.run_id, sources)
        result.status, result.finished_at = "succeeded", _now()
        _record_run(con, result)
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
        if t.name in existing and _scalar(con, f"SELECT count(*) FROM main.{q(t.name)}")
    }


def _record_failed_run(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    """Record a failed run on its own (the run's own transaction was rolled back)."""
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(_RUNS_DDL)
        _record_run(con, result)
        con.execute("COMMIT")
    except duckdb.Error as e:  # the database itself failed: the original error is the one to report
        log.warning("could not record failed ingestion run %s: %s", result.run_id, _first_line(e))
