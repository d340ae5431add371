"""The tables an ingestion writes (created, or migrated from an earlier database) and the staging of a
table's files: each file read into a temporary table, its columns converted to their types."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import duckdb

from ebr.contracts import ContractRunner
from ebr.contracts.casting import cast_sql, excerpt, quote_str
from ebr.contracts.casting import quote_ident as q
from ebr.ingestion.discover import TableSource, file_format
from ebr.ingestion.errors import IngestConfigError, MalformedInputError, first_line
from ebr.ingestion.validate import scalar
from ebr.schema import LOG_TABLES, Column, Table

# The names the staging tables use themselves (an extra document column may not take one).
STAGING_COLUMNS = ("row_id", "file_id", "source_row", "type_errors", "rowid")

RUNS_DDL = """CREATE TABLE IF NOT EXISTS main.ingest_runs (
    run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    logs_dir VARCHAR, error VARCHAR, counts_json VARCHAR, contracts_json VARCHAR)"""
_QUARANTINE_DDL = """CREATE TABLE IF NOT EXISTS main.quarantine (
    run_id VARCHAR, table_name VARCHAR, source_file VARCHAR, source_row BIGINT,
    expectation VARCHAR, reason VARCHAR, row_json VARCHAR)"""


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
    con.execute(RUNS_DDL)


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


def _literal_path(path: Path) -> str:
    """`path` as a DuckDB file pattern that matches only itself: `*`, `?` and `[` bracketed."""
    return re.sub(r"([*?\[])", r"[\1]", str(path))


def _reader(path: Path) -> str:
    p = quote_str(_literal_path(path))
    return {
        "parquet": f"read_parquet({p})",
        "csv": f"read_csv({p}, header = true, all_varchar = true)",
        "json": f"read_json({p}, format = 'newline_delimited', sample_size = -1)",
    }[file_format(path)]


def _raw_value(column: str) -> str:
    """SQL for a column of the file in its raw table (a field of `record`)."""
    return f"record[{quote_str(column)}]"


def _fresh_name(taken: Sequence[str]) -> str:
    """An identifier none of `taken` is equal to (DuckDB compares names without case)."""
    lower = {name.lower() for name in taken}
    return next(f"r{i}" for i in range(len(lower) + 1) if f"r{i}" not in lower)


def typed_columns(table: Table) -> str:
    """The column definitions of `table` with their SQL types (a staging or accepted table's)."""
    return ", ".join(f"{q(c.name)} {c.sql_type}" for c in table.columns)


def stage_source(con: duckdb.DuckDBPyConnection, runner: ContractRunner, source: TableSource) -> None:
    """Read every file of a table into temp.stage_<table>: row_id, file_id, source_row, the typed columns
    and type_errors (which values did not parse).

    Each file stays as temp.raw_<table>_<file_id> (source_row, record: the row as read, a struct of the file's
    columns), so that no input column can shadow a name the ingestion uses; the quarantine keeps a bad row as
    it was read."""
    table = source.table
    t = table.name
    con.execute(
        f"CREATE TEMP TABLE stage_{t} "
        f"(row_id BIGINT, file_id INTEGER, source_row BIGINT, {typed_columns(table)}, type_errors VARCHAR)"
    )
    offset = 0
    for file_id, path in enumerate(source.files):
        if path.stat().st_size == 0:
            raise MalformedInputError(f"{path}: empty file")
        raw = f"temp.raw_{t}_{file_id}"
        reader = _reader(path)
        try:
            names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
            row = q(_fresh_name(names))  # the file's row as a struct: an alias no column of the file takes
            con.execute(
                f"CREATE TEMP TABLE raw_{t}_{file_id} AS "
                f"SELECT row_number() OVER () AS source_row, {row} AS record FROM {reader} {row}"
            )
        except duckdb.Error as e:
            raise MalformedInputError(
                f"{path}: cannot be read as {file_format(path)}: "
                f"{excerpt(first_line(e).replace(str(path), '...'))}"  # the path is named already
            ) from None
        described = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT record.* FROM {raw})")
        types = dict(described.fetchall())
        problems = runner.check_file(t, con.execute(f"SELECT record.* FROM {raw} LIMIT 1").df())
        if problems:
            raise MalformedInputError(f"{path}: {'; '.join(problems)}")
        typed, errors = [], []
        for c in table.columns:
            if c.name not in types:  # a nullable or declared column the file does not have
                typed.append(f"CAST(NULL AS {c.sql_type}) AS {q(c.name)}")
                continue
            expr = cast_sql(_raw_value(c.name), types[c.name], c.sql_type)
            if expr is None:
                raise MalformedInputError(
                    f"{path}: column {c.name} is {types[c.name]}, which cannot hold {c.sql_type}"
                )
            typed.append(f"{expr} AS {q(c.name)}")
            typed.append(f"{_raw_value(c.name)} AS {q('raw.' + c.name)}")
            value = q("raw." + c.name)
            if types[c.name] == "JSON":  # a JSON string's text, without its quotes
                value = f"json_extract_string({value}, '$')"
            raw_text = f"left(CAST({value} AS VARCHAR), 60)"
            errors.append(
                f"CASE WHEN {q('raw.' + c.name)} IS NOT NULL AND {q(c.name)} IS NULL "
                f"THEN {quote_str(c.name + ' ')} || {quote_str(chr(39))} || {raw_text} || "
                f"{quote_str(chr(39) + ' does not parse as ' + c.sql_type)} END"
            )
        columns = ", ".join(q(c.name) for c in table.columns)
        con.execute(
            f"INSERT INTO temp.stage_{t} SELECT {offset} + source_row - 1, {file_id}, source_row, {columns}, "
            f"NULLIF(concat_ws('; ', {', '.join(errors)}), '') "
            f"FROM (SELECT source_row, {', '.join(typed)} FROM {raw})"
        )
        _reject_untyped_columns(con, path, table, raw, file_id, [c for c in table.columns if c.name in types])
        offset += scalar(con, f"SELECT count(*) FROM {raw}")


def _reject_untyped_columns(
    con: duckdb.DuckDBPyConnection, path: Path, table: Table, raw: str, file_id: int, present: list[Column]
) -> None:
    """A column none of whose values parses has the wrong type: the file is malformed, not its rows."""
    raw_counts = con.execute(
        f"SELECT {', '.join(f'count({_raw_value(c.name)})' for c in present)} FROM {raw}"
    ).fetchone()
    typed_counts = con.execute(
        f"SELECT {', '.join(f'count({q(c.name)})' for c in present)} "
        f"FROM temp.stage_{table.name} WHERE file_id = {file_id}"
    ).fetchone()
    for c, n_raw, n_typed in zip(present, raw_counts, typed_counts, strict=True):
        if n_raw and not n_typed:
            value = _raw_value(c.name)
            first = scalar(con, f"SELECT {value}::VARCHAR FROM {raw} WHERE {value} IS NOT NULL LIMIT 1")
            raise MalformedInputError(
                f"{path}: column {c.name}: no value can be read as {c.sql_type} (first: {excerpt(first)})"
            )
