"""`ebr retrain`: the retrain flow (ingest -> mine -> train -> ensembles -> ANN -> gate -> publish)."""

from __future__ import annotations

import json

import click


@click.command(name="retrain", context_settings={"ignore_unknown_options": True})
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the run's report as JSON on the last line.")
@click.option("--no-publish", is_flag=True, help="Run everything, gate included, but publish nothing.")
@click.option("--resume", metavar="RUN_ID", help="Resume a failed run from its last finished step.")
def command(overrides: tuple[str, ...], as_json: bool, no_publish: bool, resume: str | None) -> None:
    """Run the retrain flow, like `python -m ebr.flows.retrain`, on the embedded default or your logs.

    OVERRIDES are Hydra overrides, e.g. `data.scale=tiny model.margin=0.3 mining.easy_hard_ratio=10`
    or `data.logs_dir=/path/to/logs`. Writes runs/<run_id>/report.json under $EBR_HOME; publishes a new
    index version when the recall gate passes. Exit status 1 when the gate fails (nothing published).
    """
    from ebr.evaluation.gate import GateFailedError
    from ebr.flows.retrain import retrain

    try:
        report = retrain(publish=not no_publish, resume=resume, overrides=list(overrides))
    except GateFailedError as exc:
        if as_json and hasattr(exc, "report"):
            click.echo(json.dumps({k: v for k, v in exc.report.items() if k != "config"}, default=str))
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "config"}, default=str))
        return
    click.echo(f"gate: {report['gate']['reason']}")
    click.echo(f"published version: {report['published_version']}")
    click.echo(f"report: {report['run_dir']}/report.json")
    click.echo("UI: `prefect server start`, then http://127.0.0.1:4200/runs (this run and its artifacts)")
