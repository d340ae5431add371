"""`ebr gc`: delete old versions, runs, checkpoints, engine state and staging leftovers by the retention
policy of conf/gc/default.yaml; the only command that deletes state."""

from __future__ import annotations

import json

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


@click.command(name="gc")
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted and the bytes it would free.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@dataset_option
@click.argument("overrides", nargs=-1)
def command(dry_run: bool, as_json: bool, dataset: str | None, overrides: tuple[str, ...]) -> None:
    """Apply the retention policy to a dataset (--dataset): keep the gc.keep_versions newest published
    versions (and always the served one and the one served before it), the gc.keep_runs newest runs,
    checkpoints in the gc.keep_checkpoints newest of those; delete the rest, the engine state of what is
    deleted and staging folders of interrupted publications. Version folders the registry does not know are
    kept and reported (`ebr versions --adopt VERSION`). OVERRIDES are Hydra overrides of
    conf/gc/default.yaml, e.g. `gc.keep_runs=3`. Each deletion is logged.
    """
    import duckdb
    from hydra.errors import HydraException

    from ebr.config import load_config, typed
    from ebr.registry.gc import collect

    try:
        policy = typed(load_config(list(overrides), config_name="gc/default").gc)
    except (HydraException, ValueError, TypeError) as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="OVERRIDES") from None
    name = resolve_dataset(dataset)
    try:
        report = collect(policy, name, dry_run=dry_run)
    except (OSError, duckdb.Error, ValueError) as e:
        raise click.ClickException(f"gc failed: {e}") from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    for d in report.deletions:
        click.echo(f"{verb} {d.kind} {d.name}  {d.path}")
    for name in report.unknown_versions:
        click.echo(f"kept unregistered version folder {name} (adopt it: ebr versions --adopt {name})")
    click.echo(
        f"{verb} {len(report.deletions)} item(s), {report.bytes_freed} bytes "
        f"({report.bytes_freed / 2**20:.1f} MiB); versions kept: {', '.join(report.kept_versions) or 'none'}"
    )
