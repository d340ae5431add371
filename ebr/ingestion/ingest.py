"""Ingestion: a folder of log tables -> the DuckDB file, validated by the data contracts, in one transaction.

`ingest_logs` is the whole step as a plain function (ebr/flows/ingest.py wraps it in a Prefect flow):
1. find the tables in the folder (`<table>.parquet|.csv|.jsonl` or a folder `<table>/` of part files) and its
   schema_version (1 or 2);
2. read each file into a staging table with its source row and typed columns (documents with the extra
   columns declared in `ingest.documents.columns`); a file that is not a table, is empty, lacks required
   columns or holds a column of the wrong type stops the run (MalformedInputError);
3. per table, in dependency order: skip rows identical to loaded ones, compute the cross-row checks, run the
   suite with Great Expectations, and split the rows into accepted and quarantined;
4. if any table's quarantined share passes `max_bad_fraction`, stop (BadShareError);
5. create or migrate the tables, insert the accepted rows, the quarantine records and the run record, and
   commit.
Any failure rolls the transaction back: the log tables and the quarantine are left as they were, and the
failed run is recorded in `ingest_runs` with its error. See docs/ingestion.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
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
from ebr.contracts.checks import CheckContext, check_query, register_functions, skip_reason
from ebr.retrieval.terms import term_value
from ebr.runs import new_run_id
from ebr.schema import (
    DOCUMENT_COLUMN_TYPES,
    DOCUMENTS,
    LOG_TABLES,
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    TABLES,
    VERTICALS,
    Column,
    Table,
)

# Table file suffixes and the DuckDB reader of each (compressed CSV/JSONL are read transparently).
FORMATS = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".jsonl": "json", ".jsonl.gz": "json"}
# What an extra document column may be called, and the names the staging tables use themselves.
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
_STAGING_COLUMNS = ("row_id", "file_id", "source_row", "type_errors", "rid", "rowid")

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
    text_max_chars: dict[str, int | None]  # None: no maximum
    sample_failures: int
    verticals: tuple[str, ...] | None = None  # None: any vertical
    document_columns: dict[str, str] = field(default_factory=dict)  # extra document column -> its kind

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | DictConfig) -> IngestConfig:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        config = cls(
            max_bad_fraction=float(raw["max_bad_fraction"]),
            validation_batch_rows=int(raw["validation_batch_rows"]),
            text_max_chars={k: None if v is None else int(v) for k, v in raw["text_max_chars"].items()},
            sample_failures=int(raw["sample_failures"]),
            verticals=_verticals(raw.get("verticals")),
            document_columns=_document_columns((raw.get("documents") or {}).get("columns") or {}),
        )
        if not 0.0 <= config.max_bad_fraction <= 1.0:
            raise IngestConfigError(
                f"ingest.max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}"
            )
        if config.validation_batch_rows < 1:
            raise IngestConfigError(
                f"ingest.validation_batch_rows must be >= 1, got {config.validation_batch_rows}"
            )
        for name, n in config.text_max_chars.items():
            if n is not None and n < 1:
                raise IngestConfigError(f"ingest.text_max_chars.{name} must be null or >= 1, got {n}")
        return config

    def suite_params(self, schema_version: int = SCHEMA_VERSION) -> dict[str, Any]:
        """The values of the suites' `$PARAMETER`s for a folder of `schema_version`: a version-1 folder keeps
        its own verticals (VERTICALS), whatever `verticals` says."""
        verticals = VERTICALS if schema_version == 1 else self.verticals
        return {f"{name}_max_chars": n for name, n in self.text_max_chars.items()} | {
            "verticals": None if verticals is None else list(verticals)
        }

    def log_tables(self) -> tuple[Table, ...]:
        """The log tables as this run reads and loads them: documents with the declared extra columns."""
        extra = tuple(
            Column(name, DOCUMENT_COLUMN_TYPES[kind], nullable=True)
            for name, kind in self.document_columns.items()
        )
        return tuple(t.with_columns(extra) if t is DOCUMENTS else t for t in LOG_TABLES)


def _verticals(value: Any) -> tuple[str, ...] | None:
    """`ingest.verticals`: null (any vertical) or a non-empty list of vertical names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise IngestConfigError(f"ingest.verticals must be null or a non-empty list of names, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not term_value(name):
            raise IngestConfigError(
                f"ingest.verticals: {name!r} is not a vertical name (its term vertical:<name> is empty)"
            )
    return tuple(value)


def _document_columns(value: Any) -> dict[str, str]:
    """`ingest.documents.columns`: extra document column -> text | categorical | numeric."""
    if not isinstance(value, Mapping):
        raise IngestConfigError(f"ingest.documents.columns must map names to kinds, got {value!r}")
    internal = {*_STAGING_COLUMNS, *(e.column for e in load_contract(DOCUMENTS.name).checks)}
    for name, kind in value.items():
        key = f"ingest.documents.columns.{name}"
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise IngestConfigError(f"{key}: not a plain identifier (a-z, 0-9 and _, starting with a letter)")
        if name in DOCUMENTS.column_names:
            raise IngestConfigError(f"{key}: {name} is a core column of documents")
        if name in internal:
            raise IngestConfigError(f"{key}: {name} is a column name the ingestion uses itself")
        if not isinstance(kind, str) or kind not in DOCUMENT_COLUMN_TYPES:
            raise IngestConfigError(
                f"{key}: unknown type {kind!r} (expected {', '.join(DOCUMENT_COLUMN_TYPES)})"
            )
    return dict(value)


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
    document_columns: dict[str, str] = field(default_factory=dict)  # extra document columns kept, by kind
    files: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, TableCounts] = field(default_factory=dict)
    contracts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None

    def counts_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "document_columns": self.document_columns,
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
            "document_columns": self.document_columns,
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
    """The folder's schema_version (schema.json, as the simulator writes it): one of SCHEMA_VERSIONS; absent
    means the current one."""
    path = logs_dir / "schema.json"
    if not path.exists():
        return SCHEMA_VERSION
    try:
        version = json.loads(path.read_text()).get("schema_version")
    except (json.JSONDecodeError, AttributeError):
        raise MalformedInputError(f"{path}: not a JSON object with a schema_version") from None
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        raise MalformedInputError(
            f"{path}: schema_version {version!r} is not supported "
            f"(this platform reads {', '.join(map(str, SCHEMA_VERSIONS))})"
        )
    return version


def find_sources(logs_dir: Path, tables: Sequence[Table] = LOG_TABLES) -> list[TableSource]:
    """Those of `tables` present in `logs_dir`, in their order (dependency order); other files
    (ground_truth/, reports) are ignored."""
    if not logs_dir.is_dir():
        raise MalformedInputError(f"{logs_dir}: not a folder")
    sources = []
    for table in tables:
        name = table.name
        candidates = [p for p in sorted(logs_dir.glob(f"{name}.*")) if p.is_file()]
        unknown = [p for p in candidates if p.name not in {name + suffix for suffix in FORMATS}]
        if unknown:
            raise MalformedInputError(f"{unknown[0]}: not a table file (expected {_expected(name)})")
        folder = logs_dir / name
        given = candidates + ([folder] if folder.is_dir() else [])
        if len(given) > 1:
            raise MalformedInputError(
                f"{logs_dir}: {name} is given more than once ({', '.join(p.name for p in given)})"
            )
        if not given:
            continue
        if given[0].is_dir():
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
            sources.append(TableSource(table, (given[0],)))
    return sources


def create_tables(con: duckdb.DuckDBPyConnection, tables: Sequence[Table] = LOG_TABLES) -> None:
    """The log tables (the input schema and any declared document columns, keys enforced), quarantine and
    ingest_runs, if missing; log tables of an earlier database are migrated to `tables`."""
    for table in tables:
        cols = ", ".join(
            f"{q(c.name)} {c.sql_type}{'' if c.nullable else ' NOT NULL'}" for c in table.columns
        )
        key = ", ".join(q(k) for k in table.key)
        con.execute(f"CREATE TABLE IF NOT EXISTS main.{q(table.name)} ({cols}, PRIMARY KEY ({key}))")
        _migrate(con, table)
    con.execute(_QUARANTINE_DDL)
    con.execute(_RUNS_DDL)


def _migrate(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Bring an existing table to `table`: a column it lacks (a newly declared document column) is added, and
    a column the schema now allows to be null drops NOT NULL (version 1 required documents.created_at,
    documents.popularity and sessions.user_id)."""
    t = q(table.name)
    found = {
        name: (sql_type, nullable)
        for name, sql_type, nullable in con.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND table_name = ?",
            [table.name],
        ).fetchall()
    }
    for c in table.columns:
        if c.name not in found:
            con.execute(f"ALTER TABLE main.{t} ADD COLUMN {q(c.name)} {c.sql_type}")
        elif found[c.name][0] != c.sql_type:
            raise IngestConfigError(
                f"ingest.{table.name}.columns.{c.name}: {table.name}.{c.name} is {found[c.name][0]} "
                f"in the database, not {c.sql_type}"
            )
        elif c.nullable and not found[c.name][1]:
            con.execute(f"ALTER TABLE main.{t} ALTER COLUMN {q(c.name)} DROP NOT NULL")


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


def _typed_columns(table: Table) -> str:
    return ", ".join(f"{q(c.name)} {c.sql_type}" for c in table.columns)


def _stage(con: duckdb.DuckDBPyConnection, runner: ContractRunner, source: TableSource) -> None:
    """Read every file of a table into temp.stage_<table>: row_id, file_id, source_row, the typed columns
    and type_errors (which values did not parse).

    The raw files stay as temp.raw_<table>_<file_id> (the quarantine keeps a bad row as it was read)."""
    table = source.table
    t = table.name
    con.execute(
        f"CREATE TEMP TABLE stage_{t} "
        f"(row_id BIGINT, file_id INTEGER, source_row BIGINT, {_typed_columns(table)}, type_errors VARCHAR)"
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
            if c.name not in types:  # a nullable or declared column the file does not have
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
            value = f"left(CAST({q(c.name)} AS VARCHAR), 60)"  # as in type_errors: long texts stay short
            first = _scalar(con, f"SELECT {value} FROM {raw} WHERE {q(c.name)} IS NOT NULL LIMIT 1")
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
    and accepted (temp.accepted_<table>). Great Expectations sees the suite's columns only: not the declared
    document columns, which their types check (long texts stay in DuckDB)."""
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

    suite_cols = ", ".join(q(c) for c in TABLES[t].column_names)
    flags = "".join(f", {q(c)}" for c in checks)
    joins = " ".join(f"LEFT JOIN temp.check_{t}_{c} USING (row_id)" for c in checks)
    n_rows = _scalar(con, f"SELECT count(*) FROM {stage}")
    failures = []
    for lo in range(0, n_rows, batch_rows):
        frame = con.execute(f"""
            SELECT row_id, {suite_cols}, type_errors{flags} FROM {stage} {joins}
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
        con.execute(f"INSERT INTO main.{q(t)} ({cols}) SELECT {cols} FROM temp.accepted_{t} ORDER BY row_id")
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
        raise DatabaseUnavailableError(f"{db_path}: cannot open the database: {_first_line(e)}") from e
    try:
        con.execute("SET TimeZone = 'UTC'")
        register_functions(con)
        _ingest(con, logs_dir, config, result)
    except Exception as e:
        result.status, result.finished_at = "failed", _now()
        result.error = str(e) if isinstance(e, IngestError) else f"{type(e).__name__}: {_first_line(e)}"
        _record_failed_run(con, result)
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
    result.schema_version = read_schema_version(logs_dir)
    runner = ContractRunner(
        config.suite_params(result.schema_version), sample_failures=config.sample_failures
    )
    try:
        _load(con, runner, logs_dir, config, result)
    finally:
        result.contracts = runner.results()


def _load(
    con: duckdb.DuckDBPyConnection,
    runner: ContractRunner,
    logs_dir: Path,
    config: IngestConfig,
    result: IngestResult,
) -> None:
    tables = config.log_tables()
    sources = find_sources(logs_dir, tables)
    result.files = {s.table.name: [str(p) for p in s.files] for s in sources}
    given, loaded = {s.table.name for s in sources}, _loaded_tables(con)
    missing = [t.name for t in tables if t.required and t.name not in given | loaded]
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
        create_tables(con, tables)
        for table in tables:
            con.execute(f"CREATE TEMP TABLE accepted_{table.name} (row_id BIGINT, {_typed_columns(table)})")
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
