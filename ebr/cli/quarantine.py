"""`ebr quarantine`: the rows that ingestion quarantined, with the expectation each failed and why
(the `quarantine` table, docs/ingestion.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ebr.cli.datasets import dataset_option, resolve_dataset

_COLUMNS = ("run_id", "table_name", "source_file", "source_row", "expectation", "reason", "row_json")


def read_quarantine(
    db_path: Path, table: str | None = None, run_id: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """The quarantine records of `db_path` (optionally of one table or run): the first `limit` of them,
    and counts per table and expectation over all of them (`records`; `rows`: distinct source rows)."""
    import duckdb

    if not db_path.is_file():
        raise click.ClickException(f"{db_path}: no database (run `ebr ingest --logs DIR` first)")
    where, params = [], []
    for column, value in (("table_name", table), ("run_id", run_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    condition = f"WHERE {' AND '.join(where)}" if where else ""
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as e:
        raise click.ClickException(f"{db_path}: cannot open the database: {str(e).splitlines()[0]}") from None
    try:
        if not con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'quarantine'").fetchall():
            raise click.ClickException(f"{db_path}: no quarantine table (nothing ingested yet)")
        rows = con.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM quarantine {condition} "
            "ORDER BY run_id, table_name, source_file, source_row, expectation LIMIT ?",
            [*params, limit],
        ).fetchall()
        counts = con.execute(
            f"SELECT table_name, expectation, count(*), count(DISTINCT (source_file, source_row)) "
            f"FROM quarantine {condition} GROUP BY ALL ORDER BY table_name, expectation",
            params,
        ).fetchall()
        [(total, distinct)] = con.execute(
            "SELECT count(*), count(DISTINCT (table_name, source_file, source_row)) "
            f"FROM quarantine {condition}",
            params,
        ).fetchall()
    finally:
        con.close()
    return {
        "db_path": str(db_path),
        "records": total,
        "rows": distinct,
        "shown": [dict(zip(_COLUMNS, r, strict=True)) for r in rows],
        "counts": [{"table": t, "expectation": e, "records": n, "rows": d} for t, e, n, d in counts],
    }


@click.command(name="quarantine")
@dataset_option
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DuckDB file to read instead of the dataset's.",
)
@click.option("--table", default=None, help="Only this log table (e.g. impressions).")
@click.option("--run", "run_id", default=None, help="Only the records of this ingestion run id.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Records listed.")
@click.option("--json", "as_json", is_flag=True, help="Print the records and counts as JSON.")
def command(
    dataset: str | None,
    db_path: Path | None,
    table: str | None,
    run_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List quarantined rows: table, run, source file and row, the failed expectation, the reason and an
    excerpt of the row as read; then the counts per table and expectation (over all matching records).

    A row that failed two expectations has two records. Reads the database `ebr ingest` writes.
    """
    from ebr import home
    from ebr.contracts.casting import excerpt

    if db_path is None:
        db_path = home.db_path(resolve_dataset(dataset))
    found = read_quarantine(db_path, table, run_id, limit)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for r in found["shown"]:
        click.echo(
            f"{r['table_name']}  {r['run_id']}  {r['source_file']}:{r['source_row']}  {r['expectation']}\n"
            f"    {r['reason']}\n    row {excerpt(r['row_json'])}"
        )
    shown = len(found["shown"])
    if shown < found["records"]:
        click.echo(f"... {found['records'] - shown} more records (--limit, --table, --run)")
    for c in found["counts"]:
        click.echo(f"{c['table']:12s} {c['expectation']}: {c['rows']:,} rows ({c['records']:,} records)")
    click.echo(f"{found['rows']:,} quarantined rows ({found['records']:,} records) in {found['db_path']}")
