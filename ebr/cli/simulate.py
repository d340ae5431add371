"""`ebr simulate`: write a simulated world (log tables, ground-truth intents, report)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ebr import home


@click.command("simulate")
@click.option(
    "--scale",
    default=None,
    help="World size: a file of conf/simulator/ (tiny, small, large); the override scale=NAME is the same "
    "[default: small].",
)
@click.option(
    "--seed",
    default=None,
    type=int,
    help="Seed; the same seed and config give identical files; the override seed=N is the same [default: 7].",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write (replaced if it holds a world). Default: $EBR_HOME/worlds/sim-<scale>-s<seed>.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A simulator setting without its prefix, as the override simulator.KEY=VALUE (--set users=5000).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the world's path and report as JSON.")
@click.argument("overrides", nargs=-1)
def command(
    scale: str | None,
    seed: int | None,
    out: Path | None,
    settings: tuple[str, ...],
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Simulate a social network and its search logs (docs/simulator.md).

    OVERRIDES are Hydra-style overrides: `scale=NAME`, `seed=N` and overrides of the simulator's config
    (conf/simulator/<scale>.yaml), e.g. `ebr simulate scale=tiny seed=3 simulator.users=2000
    +simulator.countries.FR=0.05 --out DIR`; they are checked before anything is written. Writes users,
    friendships, documents, memberships, sessions and impressions as Parquet in the log schema
    (docs/log_schema.md), ground_truth/intents.parquet (for evaluation only), report.json and report.md.
    """
    from ebr.logs import stdout_to_stderr
    from ebr.simulator.config import load_scale
    from ebr.simulator.world import simulate

    settings = list(settings)
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("scale", "seed"):
            given = scale if key == "scale" else seed
            if given is not None and str(given) != value:
                raise click.BadParameter(f"{override} and --{key} {given}: give one", param_hint="OVERRIDES")
            if key == "seed" and not value.lstrip("-").isdigit():
                raise click.BadParameter(f"{override}: the seed is an integer", param_hint="OVERRIDES")
            scale, seed = (value, seed) if key == "scale" else (scale, int(value))
        elif key.lstrip("+").startswith("simulator."):
            settings.append(override.replace("simulator.", "", 1))  # load_scale's keys have no prefix
        else:
            raise click.BadParameter(
                f"{override}: expected scale=NAME, seed=N or simulator.KEY=VALUE", param_hint="OVERRIDES"
            )
    scale, seed = scale or "small", 7 if seed is None else seed
    try:
        load_scale(scale, settings)  # the whole config checked before anything is written
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="OVERRIDES") from None
    out = out or home.world_dir(scale, seed)
    try:
        with stdout_to_stderr(as_json):
            path = simulate(scale, seed, out, settings)
    except FileExistsError as e:
        raise click.BadParameter(str(e), param_hint="--out") from e
    except (ValueError, KeyError) as e:
        raise click.ClickException(f"simulator config: {e}") from e
    report = json.loads((path / "report.json").read_text())
    if as_json:
        click.echo(json.dumps({"path": str(path), "report": report}))
        return
    c = report["counts"]
    click.echo(
        f"world written to {path}: {c['users']:,} users, {c['documents']['total']:,} documents, "
        f"{c['sessions']['total']:,} sessions; name collisions {report['name_collision_rate']:.1%}, "
        f"typos {report['typo_rate']:.1%}, failed sessions {report['failed_session_rate']:.1%} "
        f"(see {path / 'report.md'})"
    )
