"""`ebr datasets`: the datasets of the home (each with its own DuckDB file, runs and versions), and the
`--dataset` option the other commands share."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

DATASET_HELP = (
    "Dataset (a named log source with its own database, runs and versions; `ebr datasets` lists them) "
    "[default: the default config's data.dataset, sim-small-s7]."
)


def dataset_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The `--dataset NAME` option of a command (its value: a name or None; see `resolve_dataset`)."""
    return click.option("--dataset", "dataset", metavar="NAME", default=None, help=DATASET_HELP)(fn)


def resolve_dataset(name: str | None, must_exist: bool = True) -> str:
    """The dataset a command works on: `name`, else the default config's `data.dataset`; with must_exist, a
    one-line error listing the datasets there are when it has no folder (and a hint for an old home)."""
    from ebr import home

    if name is None:
        from ebr.config import load_config

        name = str(load_config(config_name="data/default").data.dataset)  # the data group alone
    try:
        home.check_dataset(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--dataset") from None
    hint = home.legacy_hint(name)
    if hint:
        click.echo(f"note: {hint}", err=True)
    if must_exist and not home.dataset_dir(name).is_dir():
        there = ", ".join(home.datasets()) or "none yet: `ebr ingest --logs DIR` or `ebr retrain` makes one"
        raise click.ClickException(
            f"no dataset {name} in {home.home()} (datasets: {there}); give --dataset NAME"
        )
    return name


@click.command(name="datasets")
@click.option("--json", "as_json", is_flag=True, help="Print the datasets as a JSON list.")
def command(as_json: bool) -> None:
    """List the datasets of $EBR_HOME: each one's log tables with their row counts, its last ingestion run
    and its served version.

    A dataset is a named log source (a simulated world is sim-<scale>-s<seed>, a folder of logs is named by
    data.dataset / --dataset, default the folder's name) with its own folder $EBR_HOME/datasets/<name>/:
    DuckDB file, runs/ and versions/. Select one with `data.dataset=NAME` (retrain, train, mine), the flow
    parameter `dataset`, or `--dataset NAME` (ingest, search, serve, versions, rollback, gc).
    """
    import duckdb

    from ebr import home
    from ebr.registry.publication import dataset_summary

    found = []
    for name in home.datasets():
        try:
            found.append(dataset_summary(name))
        except (OSError, duckdb.Error) as e:  # e.g. a database another process is writing
            found.append(
                {"dataset": name, "path": str(home.dataset_dir(name)), "error": str(e).splitlines()[0]}
            )
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no datasets in {home.home()} (`ebr ingest --logs DIR` or `ebr retrain` makes one)")
    for d in found:
        if "error" in d:
            click.echo(f"{d['dataset']}  unreadable: {d['error']}")
            continue
        tables = ", ".join(f"{t} {n:,}" for t, n in d["tables"].items()) or "nothing ingested"
        last = d["last_ingest"]
        ingest = (
            f"last ingest {last['run_id']} ({last['status']}, {last['finished_at'][:19]})"
            if last
            else "never"
        )
        click.echo(
            f"{d['dataset']}  served {d['served_version'] or '-'} ({d['versions']} versions)  {ingest}\n"
            f"    {tables}"
        )
    resolve_dataset(None, must_exist=False)  # the note on a home from before datasets, if it is one
