"""`ebr rollback VERSION`: serve an earlier published version again."""

from __future__ import annotations

import json

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


@click.command(name="rollback")
@click.argument("version")
@dataset_option
@click.option("--json", "as_json", is_flag=True, help='Print {"dataset", "served", "previous"} as JSON.')
def command(version: str, dataset: str | None, as_json: bool) -> None:
    """Serve VERSION of a dataset (--dataset; see `ebr versions`) after checking every file against its
    manifest.

    The switch is atomic (serving.json is replaced in one rename) and recorded in the registry's
    serving_events. An unknown or corrupted version is refused and the served version stays as it is; a
    version folder the registry does not know is registered first with `ebr versions --adopt VERSION`.
    """
    import duckdb

    from ebr.registry import CorruptVersionError
    from ebr.registry.catalogue import UnknownVersionError, rollback

    name = resolve_dataset(dataset)
    try:
        previous = rollback(name, version)
    except UnknownVersionError as e:
        raise click.BadParameter(str(e), param_hint="VERSION") from None
    except CorruptVersionError as e:
        raise click.ClickException(f"refusing to serve corrupted version {version}: {e}") from None
    except (OSError, duckdb.Error) as e:
        raise click.ClickException(f"rollback to {version} failed, serving unchanged: {e}") from None
    if as_json:
        click.echo(json.dumps({"dataset": name, "served": version, "previous": previous}))
        return
    click.echo(f"serving {version} (was {previous or 'nothing'}) in dataset {name}")
