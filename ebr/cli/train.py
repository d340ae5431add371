"""`ebr train`: train the text and unified towers on the ingested logs and compare them with the baselines."""

from __future__ import annotations

import json
from typing import Any

import click

from ebr import home
from ebr.runs import start_run


def recall_lines(recall: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The recall table of a report (`ebr train`, `ebr retrain`): recall@10 per model and vertical."""
    return [
        f"  recall@10 {model:<12} " + "  ".join(f"{v}={r['10']:.3f}" for v, r in per_vertical.items())
        for model, per_vertical in recall.items()
    ]


@click.command(name="train")
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary.")
def command(overrides: tuple[str, ...], as_json: bool) -> None:
    """Train towers on the logs of the dataset (data.dataset) and evaluate them on held-out sessions.

    OVERRIDES are Hydra overrides, e.g. `model.margin=0.3 train.epochs=2 train.models=[text,unified]`.
    Sessions are split by time (data.split: train, tune, evaluate); the recall table is computed on the
    evaluation sessions. Writes runs/<run_id>/report.json, report.md and config.yaml, checkpoints, exported
    query towers (towers/<model>/) and document embeddings. Models: the variants of train.models
    (conf/train); baselines: incumbent (logged term matching), bm25 (the text fields).
    """
    from ebr.cli import compose

    cfg = compose(overrides)

    from ebr.logs import stdout_to_stderr
    from ebr.models.features import MissingTableError
    from ebr.runners import open_shards
    from ebr.steps.train_eval import train_and_evaluate

    run = start_run(cfg, "train", cfg.data.dataset)
    try:
        with stdout_to_stderr(as_json), open_shards(cfg.runner) as shards:  # conf/runner/
            report = train_and_evaluate(cfg, home.db_path(cfg.data.dataset), run.path, shards)
    except (MissingTableError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    report["run_id"] = run.run_id
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, default=str))
        return
    click.echo(f"run {run.run_id}: {run.path}")
    for line in recall_lines(report["recall"]):
        click.echo(line)
    if report["split"]["warning"]:
        click.echo(f"warning: {report['split']['warning']}")
