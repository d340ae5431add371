"""Validation under the data contracts: each staged table is split into skipped, quarantined and accepted
rows; too large a quarantined share fails the run."""

from __future__ import annotations

from typing import Any

import duckdb
import pandas as pd

from ebr.contracts import ContractRunner, load_contract
from ebr.contracts.casting import quote_ident as q
from ebr.contracts.checks import CheckContext, check_query, skip_reason
from ebr.ingestion.errors import BadShareError
from ebr.ingestion.results import IngestResult, KeyConflicts, TableCounts
from ebr.schema import TABLES, Table


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The one value of a query."""
    return con.execute(sql).fetchone()[0]


def validate_table(
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
    n_rows = scalar(con, f"SELECT count(*) FROM {stage}")
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
    counts = TableCounts(
        read=n_rows,
        loaded=scalar(con, f"SELECT count(*) FROM temp.accepted_{t}"),
        quarantined=scalar(con, f"SELECT count(DISTINCT row_id) FROM temp.bad_{t}"),
        skipped_existing=scalar(con, f"SELECT count(*) FROM temp.skipped_{t}"),
    )
    counts.check(t)
    return counts


def key_conflicts(con: duckdb.DuckDBPyConnection, table: Table) -> KeyConflicts | None:
    """The rows of temp.batch_<table> (after `validate_table`: not identical to loaded rows) whose key, the
    columns of the contract's `unique_key` check, is already loaded: their count and the smallest such key."""
    keys = [
        e.meta["columns"] for e in load_contract(table.name).checks if e.meta.get("check") == "unique_key"
    ]
    if not keys:
        return None
    cols = list(keys[0])
    on = " AND ".join(f"d.{q(c)} = b.{q(c)}" for c in cols)
    rows = con.execute(f"""
        SELECT {", ".join(f"b.{q(c)}" for c in cols)}, count(*) OVER () FROM temp.batch_{table.name} b
        WHERE EXISTS (SELECT 1 FROM main.{q(table.name)} d WHERE {on})
        ORDER BY {", ".join(f"b.{q(c)}" for c in cols)} LIMIT 1""").fetchone()
    if rows is None:
        return None
    return KeyConflicts(
        rows=rows[-1], example=", ".join(f"{c}={v}" for c, v in zip(cols, rows, strict=False))
    )


def _share(table: str, counts: TableCounts, conflicts: KeyConflicts | None) -> str:
    failed = f"{counts.quarantined} of {counts.read} rows"
    loaded = f"key conflicts with rows already loaded (e.g. {conflicts.example})" if conflicts else ""
    if conflicts and conflicts.rows == counts.quarantined:
        return f"{table}: {failed} are {loaded}"
    share = f"{table}: {failed} ({counts.quarantined / counts.read:.1%}) failed their contract"
    return f"{share}, {conflicts.rows} of them {loaded}" if conflicts else share


def check_bad_share(result: IngestResult, max_bad_fraction: float) -> None:
    """BadShareError if a table's quarantined share of the rows read passes `max_bad_fraction`; rows whose
    keys are already loaded with different content are named key conflicts (another source loaded into
    this dataset: the message says to give this one its own)."""
    over = [
        (t, _share(t, c, result.key_conflicts.get(t)))
        for t, c in result.tables.items()
        if c.read and c.quarantined / c.read > max_bad_fraction
    ]
    if over:
        hint = (
            "; load this source into its own dataset (data.dataset=NAME / --dataset NAME)"
            if any(t in result.key_conflicts for t, _ in over)
            else ""
        )
        raise BadShareError(
            f"{'; '.join(text for _, text in over)}, above max_bad_fraction {max_bad_fraction}; "
            f"nothing loaded (run {result.run_id}){hint}"
        )
