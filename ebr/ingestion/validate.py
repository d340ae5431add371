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
from ebr.ingestion.results import IngestResult, TableCounts
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


def check_bad_share(result: IngestResult, max_bad_fraction: float) -> None:
    """BadShareError if a table's quarantined share of the rows read passes `max_bad_fraction`."""
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
