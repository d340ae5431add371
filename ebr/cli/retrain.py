"""`ebr retrain`: the retrain flow (ingest -> mine -> train -> ensembles -> ANN -> gate -> publish)."""

from __future__ import annotations

import json

import click


@click.command(name="retrain")
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the run's report as JSON (stdout: only that).")
@click.option("--no-publish", is_flag=True, help="Run everything, gate included, but publish nothing.")
@click.option("--resume", metavar="RUN_ID", help="Resume a failed run from its last finished step.")
@click.option(
    "--cfg",
    "cfg_part",
    type=click.Choice(["job"]),
    default=None,
    help="`--cfg job`: print the composed, validated config as YAML (interpolations resolved) and exit.",
)
@click.option(
    "-m",
    "--multirun",
    is_flag=True,
    help="A Hydra sweep over comma-separated values, one flow run per job "
    "(as `python -m ebr.flows.retrain -m`), e.g. `-m model.margin=0.1,0.3`.",
)
def command(
    overrides: tuple[str, ...],
    as_json: bool,
    no_publish: bool,
    resume: str | None,
    cfg_part: str | None,
    multirun: bool,
) -> None:
    """Run the retrain flow, like `python -m ebr.flows.retrain`, on the embedded default or your logs.

    OVERRIDES are Hydra overrides, e.g. `data.scale=tiny model.margin=0.3 mining.easy_hard_ratio=10`
    or `data.logs_dir=/path/to/logs`. The config is composed and checked first (a typo fails at once, exit
    status 2, before any Prefect API starts). Writes runs/<run_id>/report.json under the dataset's folder;
    publishes a new index version when the recall gate passes, and ends with the recall table. Exit status
    1 when the gate fails (nothing published).
    """
    from ebr import home
    from ebr.cli import compose

    if multirun and (as_json or no_publish or resume or cfg_part):
        raise click.UsageError("-m runs a Hydra sweep: give its options as overrides (e.g. publish=true)")
    cfg = compose(overrides, sweep=multirun)
    runs = home.runs_dir(str(cfg.data.dataset))
    if resume and not (runs / resume).is_dir():
        raise click.BadParameter(f"no run {resume} in {runs}", param_hint="--resume")
    if cfg_part:
        from omegaconf import OmegaConf

        click.echo(OmegaConf.to_yaml(cfg), nl=False)
        return
    if multirun:
        from ebr.flows.retrain import hydra_cli

        hydra_cli(["-m", *overrides])
        return
    _run(overrides, as_json, no_publish, resume)


def _run(overrides: tuple[str, ...], as_json: bool, no_publish: bool, resume: str | None) -> None:
    from ebr.cli.train import recall_lines
    from ebr.evaluation.gate import GateFailedError
    from ebr.flows.prefect_api import temporary_api
    from ebr.flows.retrain import retrain
    from ebr.ingestion.errors import IngestError
    from ebr.logs import stdout_to_stderr
    from ebr.selection.documents import IndexSelectionError

    with stdout_to_stderr(as_json), temporary_api():  # the API dies with this command
        try:
            report = retrain(publish=not no_publish, resume=resume, overrides=list(overrides))
        except GateFailedError as exc:  # the flow run failed: its gate failed a run meant to publish
            report = exc.report
        except (IngestError, IndexSelectionError) as exc:  # bad input (a contract, a predicate): one line
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "config"}, default=str))
    if not report["gate"]["passed"]:  # with --no-publish the flow run completes with this verdict
        raise click.ClickException(report["gate"]["reason"])
    if as_json:
        return
    for line in recall_lines(report["recall"]):
        click.echo(line)
    click.echo(f"gate: {report['gate']['reason']}")
    click.echo(f"published version: {report['published_version']}")
    click.echo(f"report: {report['run_dir']}/report.json")
    click.echo("UI: `prefect server start`, then http://127.0.0.1:4200/runs (this run and its artifacts)")
