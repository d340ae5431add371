"""`ebr mine`: mine validated training data from the ingested logs and retrain on it, round by round."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="mine")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DuckDB file with the ingested logs; mined tables go into it [default: data.dataset's].",
)
@click.option("--run-id", default=None, help="Run id [default: mine-<timestamp>-<random>].")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON (stdout: only that).")
@click.argument("overrides", nargs=-1)
def command(db_path: Path | None, run_id: str | None, as_json: bool, overrides: tuple[str, ...]) -> None:
    """Mine positives and negatives, validate them, store them per run and train on them (paper §6.1).

    Round 0 trains on random negatives; each of `mining.rounds` further rounds mines offline hard negatives
    with the last model from the rank window `mining.hard.window`, mixes them at `mining.easy_hard_ratio`
    and retrains. Every mined table passes the mined-data contracts first; a failure stops with the failing
    rows named. OVERRIDES are Hydra overrides of conf/retrain.yaml, e.g. `mining.easy_hard_ratio=10
    mining.hard.window=[1,100] mining.positives=clicks+hard` (docs/mining.md lists the keys).
    """
    from ebr import home
    from ebr.cli import compose

    cfg = compose(overrides)
    db = db_path or home.db_path(cfg.data.dataset)
    if not db.is_file():
        raise click.ClickException(f"{db}: no DuckDB file (run `ebr ingest` first)")

    from ebr.contracts.mined import MinedContractError
    from ebr.logs import stdout_to_stderr
    from ebr.mining.rounds import format_stage, mine_and_train
    from ebr.models.features import MissingTableError
    from ebr.runners import open_shards

    try:
        with stdout_to_stderr(as_json), open_shards(cfg.runner) as shards:  # conf/runner/
            report = mine_and_train(cfg, db, run_id, shards)
    except (MinedContractError, MissingTableError, FileNotFoundError, LookupError) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="OVERRIDES") from None
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    for stage in report["stages"]:
        click.echo(format_stage(stage))
    click.echo(f"run {report['run_id']}: final checkpoint {report['checkpoint']}")
