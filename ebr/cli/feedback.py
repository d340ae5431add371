"""`ebr feedback`: the rater feedback loop (flow `feedback`): served results -> rating tasks -> labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


@click.command(name="feedback")
@dataset_option
@click.option(
    "--replay",
    type=click.IntRange(min=0),
    default=0,
    help="First send N sessions of feedback.replay_part through the served version, logged as `ebr serve` "
    "logs searches (the embedded default has no real traffic).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Import this label file (CSV or Parquet, docs/log_schema.md) instead of the simulated raters.",
)
@click.option(
    "--budget", type=click.IntRange(min=0), default=None, help="Rating tasks to sample [feedback.budget]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's report as JSON (stdout: only that).")
@click.argument("overrides", nargs=-1)
def command(
    dataset: str | None,
    replay: int,
    labels: Path | None,
    budget: int | None,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Load the served EBR results, sample rating tasks under the budget and rate them.

    `ebr serve` logs each search's EBR results (engine.serving.log_results) under the dataset's served/.
    Without --labels, simulated raters label the tasks from the simulated world's hidden intents (RATER
    SIMULATION, the embedded default only). The next `ebr retrain` trains the relevance filter on the labels
    and publishes it with the version. OVERRIDES are Hydra overrides of the retrain config, e.g.
    `feedback.raters.error_rate=0.1`. A bad label row is one line on stderr; the valid rows land.
    """
    from ebr.cli import compose
    from ebr.flows.feedback import feedback
    from ebr.flows.prefect_api import temporary_api
    from ebr.logs import stdout_to_stderr

    name = resolve_dataset(dataset)
    compose([*overrides, f"data.dataset={name}"])  # a bad override is a usage error before anything runs
    with stdout_to_stderr(as_json), temporary_api():
        try:
            report = feedback(
                dataset=name,
                replay=replay,
                labels=None if labels is None else str(labels),
                budget=budget,
                overrides=list(overrides),
            )
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
    for error in report["labels"].get("errors", []):
        click.echo(error, err=True)
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    log, tasks, rated = report["served_log"], report["rating_tasks"], report["labels"]
    click.echo(
        f"served log: {log['segments']} segments, {log['requests']} searches, {log['hits']} EBR results, "
        f"{log['quarantined']} lines quarantined"
    )
    click.echo(f"rating tasks: {tasks['sampled']} sampled (budget {tasks['budget']})")
    click.echo(f"labels from {rated['source']}: {rated['landed']} landed, {rated['rejected']} rejected")
    for v in rated["verticals"]:
        click.echo(f"  {v['vertical']}: {v['rated']}/{v['tasks']} tasks rated, {v['relevant']} relevant")
