"""`ebr ingest`: validate a folder of log tables and load it into the home's DuckDB (ebr/flows/ingest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="ingest")
@click.option(
    "--logs",
    "logs_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of log tables: <table>.parquet|.csv|.jsonl or a folder <table>/ of part files "
    "(a simulated world folder works as is).",
)
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DuckDB file to load into [default: $EBR_HOME/ebr.duckdb].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on the last line.")
@click.argument("overrides", nargs=-1)
def command(logs_dir: Path, db_path: Path | None, as_json: bool, overrides: tuple[str, ...]) -> None:
    """Validate the log tables in --logs against the data contracts and load them, all or nothing.

    Rows that fail a contract go to the `quarantine` table with the failed expectation and their source file
    and row; the valid rows land. Ingesting the same files twice changes nothing. OVERRIDES are Hydra
    overrides of conf/ingest/default.yaml, e.g. `ingest.max_bad_fraction=0.1`, `ingest.verticals=[jobs]` or
    `+ingest.documents.columns.body=text` (an extra document column to keep). Exits non-zero on failure.
    """
    from hydra.errors import HydraException

    from ebr.flows.ingest import ingest
    from ebr.ingestion.errors import IngestError

    try:
        summary = ingest(
            logs_dir=str(logs_dir), db_path=str(db_path) if db_path else None, overrides=list(overrides)
        )
    except HydraException as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="OVERRIDES") from None
    except IngestError as e:
        if as_json and e.result is not None:
            click.echo(json.dumps(e.result.summary()))
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a disk error reading the logs or writing the database
        raise click.ClickException(str(e)) from None
    for table, counts in summary["tables"].items():
        click.echo(
            f"{table:12s} read {counts['read']:>9,}  loaded {counts['loaded']:>9,}  "
            f"quarantined {counts['quarantined']:>7,}  skipped {counts['skipped_existing']:>9,}"
        )
    click.echo(f"run {summary['run_id']} into {summary['db_path']}")
    if as_json:
        click.echo(json.dumps(summary))
