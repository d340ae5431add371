"""`ebr versions`: the published index versions, their gate metrics, and which one is served; `--adopt`
registers a version folder the registry does not know."""

from __future__ import annotations

import json

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


@click.command(name="versions")
@dataset_option
@click.option("--json", "as_json", is_flag=True, help="Print the versions as a JSON list.")
@click.option(
    "--verify", is_flag=True, help="Check every file of every version against its manifest's sha256."
)
@click.option(
    "--adopt",
    "adopt",
    multiple=True,
    metavar="VERSION",
    help="Register the unregistered folder versions/VERSION after verifying it (repeatable).",
)
def command(dataset: str | None, as_json: bool, verify: bool, adopt: tuple[str, ...]) -> None:
    """List the versions of a dataset (--dataset), oldest first, with their recall gate metrics.

    The served version is marked `*` (`"served": true` in --json). Each entry has version, created_at,
    status (published; missing: registered but its folder is gone; unregistered: a folder the registry does
    not know, e.g. after restoring an older database, which `--adopt VERSION` registers), served, run_id,
    gate_passed, gate_reason, gate_metrics ({vertical: {metric, value, floor, published}}) and
    manifest_path; with --verify also verified (and error when a file does not match). Serve another one
    with `ebr rollback VERSION`. Nothing is deleted but by `ebr gc`.
    """
    import duckdb

    from ebr.registry.catalogue import AdoptionError, list_versions
    from ebr.registry.catalogue import adopt as adopt_version

    name = resolve_dataset(dataset)
    try:
        for version in adopt:
            adopt_version(name, version)
            click.echo(f"adopted {version}", err=as_json)
        versions = list_versions(name, verify=verify)
    except AdoptionError as e:
        raise click.ClickException(str(e)) from None
    except (OSError, duckdb.Error, ValueError) as e:
        raise click.ClickException(f"cannot read the version registry: {e}") from None
    for v in versions:
        if v["status"] == "unregistered":
            click.echo(
                f"warning: {v['version']} is not in the registry (kept); register it with "
                f"`ebr versions --adopt {v['version']}`",
                err=True,
            )
        elif v["status"] == "missing":
            click.echo(f"warning: {v['version']} is registered but its folder is gone", err=True)
    if as_json:
        click.echo(json.dumps(versions, indent=2))
        return
    if not versions:
        click.echo(
            f"no published versions in dataset {name} (a retrain that passes the recall gate publishes one)"
        )
        return
    for v in versions:
        metrics = ", ".join(
            f"{vertical} {m['metric']}={m['value']:.4f}" if m["value"] is not None else f"{vertical} -"
            for vertical, m in v["gate_metrics"].items()
        )
        check = "" if "verified" not in v else ("  verified" if v["verified"] else f"  CORRUPT: {v['error']}")
        click.echo(
            f"{'*' if v['served'] else ' '} {v['version']}  {str(v['created_at'])[:19]}  {v['status']}  "
            f"run {v['run_id']}  {metrics}{check}"
        )
