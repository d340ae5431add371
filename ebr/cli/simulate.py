"""`ebr simulate`: write a simulated world (log tables, ground-truth intents, report)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ebr import home


@click.command("simulate")
@click.option(
    "--scale",
    default="small",
    show_default=True,
    help="World size: a file of conf/simulator/ (tiny, small, large).",
)
@click.option(
    "--seed",
    default=7,
    show_default=True,
    type=int,
    help="Seed; the same seed and config give identical files.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write (replaced if it holds a world). Default: $EBR_HOME/worlds/<scale>-s<seed>.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a simulator setting, e.g. --set users=5000 --set sessions.count=20000.",
)
def command(scale: str, seed: int, out: Path | None, overrides: tuple[str, ...]) -> None:
    """Simulate a social network and its search logs (docs/simulator.md).

    Writes users, friendships, documents, memberships, sessions and impressions as Parquet in the log schema
    (docs/log_schema.md), ground_truth/intents.parquet (for evaluation only), report.json and report.md.
    """
    from ebr.simulator.config import scales
    from ebr.simulator.world import simulate

    if scale not in scales():
        raise click.BadParameter(
            f"unknown scale {scale!r}; expected one of: {', '.join(scales())}", param_hint="--scale"
        )
    out = out or home.worlds_dir() / f"{scale}-s{seed}"
    try:
        path = simulate(scale, seed, out, overrides)
    except FileExistsError as e:
        raise click.BadParameter(str(e), param_hint="--out") from e
    except (ValueError, KeyError) as e:
        raise click.ClickException(f"simulator config: {e}") from e
    report = json.loads((path / "report.json").read_text())
    c = report["counts"]
    click.echo(
        f"world written to {path}: {c['users']:,} users, {c['documents']['total']:,} documents, "
        f"{c['sessions']['total']:,} sessions; name collisions {report['name_collision_rate']:.1%}, "
        f"typos {report['typo_rate']:.1%}, failed sessions {report['failed_session_rate']:.1%} "
        f"(see {path / 'report.md'})"
    )
