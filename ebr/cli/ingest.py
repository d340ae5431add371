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
    help="DuckDB file to load into [default: the dataset's, $EBR_HOME/datasets/<dataset>/ebr.duckdb].",
)
@click.option(
    "--dataset",
    metavar="NAME",
    default=None,
    help="Dataset to load into (its own database, runs and versions; `ebr datasets` lists them) "
    "[default: the folder's name, lowercased, as data.logs_dir=DIR gives].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON (stdout: only that).")
@click.argument("overrides", nargs=-1)
def command(
    logs_dir: Path, db_path: Path | None, dataset: str | None, as_json: bool, overrides: tuple[str, ...]
) -> None:
    """Validate the log tables in --logs against the data contracts and load them, all or nothing.

    Rows that fail a contract go to the `quarantine` table with the failed expectation and their source file
    and row; the valid rows land. Ingesting the same files twice changes nothing. OVERRIDES are Hydra
    overrides of conf/ingest/default.yaml, e.g. `ingest.max_bad_fraction=0.1`, `ingest.verticals=[jobs]` or
    `+ingest.documents.columns.body=text` (an extra document column to keep). Exits non-zero on failure.
    """
    from ebr import home
    from ebr.cli import compose
    from ebr.cli.datasets import resolve_dataset

    compose(overrides, config_name="ingest/default")  # a typo fails here, before any Prefect API
    try:
        name = resolve_dataset(dataset or home.folder_dataset(logs_dir), must_exist=False)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--dataset") from None

    from ebr.flows.ingest import ingest
    from ebr.flows.prefect_api import temporary_api
    from ebr.ingestion.errors import IngestError
    from ebr.logs import stdout_to_stderr

    try:
        with stdout_to_stderr(as_json), temporary_api():  # the API dies with this command
            summary = ingest(
                logs_dir=str(logs_dir),
                dataset=name,
                db_path=str(db_path) if db_path else None,
                overrides=list(overrides),
            )
    except IngestError as e:
        if as_json and e.result is not None:
            click.echo(json.dumps(e.result.summary()))
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a disk error reading the logs or writing the database
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(summary))
        return
    for table, counts in summary["tables"].items():
        click.echo(
            f"{table:12s} read {counts['read']:>9,}  loaded {counts['loaded']:>9,}  "
            f"quarantined {counts['quarantined']:>7,}  skipped {counts['skipped_existing']:>9,}"
        )
    click.echo(f"run {summary['run_id']} into dataset {summary['dataset']} ({summary['db_path']})")
    if summary["data_docs"]:
        click.echo(f"data docs {summary['data_docs']}")
