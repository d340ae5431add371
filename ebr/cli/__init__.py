"""`ebr`: the one console command for the platform's flows and the tools around them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ebr import logs

if TYPE_CHECKING:
    from omegaconf import DictConfig

# No telemetry (no internet here); a temporary Prefect API may start slowly on a busy machine.
for _name, _value in (
    ("GX_ANALYTICS_ENABLED", "false"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("DO_NOT_TRACK", "1"),
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"),
):
    os.environ.setdefault(_name, _value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ebr-platform")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show the detail: dependencies' INFO and DEBUG lines, Lightning's banners and tips, their "
    "deprecation warnings, and the platform's own INFO lines.",
)
def main(verbose: bool) -> None:
    """Embedding-based retrieval platform (Huang et al., KDD 2020), run on your search logs.

    State lives under $EBR_HOME (default: ebr_home/ in the project folder). Every command that reports
    something takes --json: stdout then holds one JSON document and nothing else.
    """
    logs.configure(verbose)


def compose(overrides: Sequence[str], config_name: str = "retrain", sweep: bool = False) -> DictConfig:
    """The validated config of a command (Hydra compose, the schema, given input paths exist), before
    anything starts (with `sweep`, that of the sweep's first job); a bad override, unknown key, missing
    group option or path is a usage error (exit 2)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ebr.config import check_inputs, config_error, first_sweep_job, load_config

    try:
        job = first_sweep_job(overrides) if sweep else list(overrides)
        cfg = load_config(job, config_name=config_name)
        check_inputs(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise click.BadParameter(config_error(e), param_hint="OVERRIDES") from None
    return cfg


def _register() -> None:
    from ebr.cli import (
        datasets,
        feedback,
        gc,
        ingest,
        mine,
        quarantine,
        retrain,
        rollback,
        search,
        serve,
        simulate,
        train,
        versions,
    )

    for module in (
        simulate,
        ingest,
        retrain,
        mine,
        train,
        search,
        serve,
        versions,
        rollback,
        gc,
        datasets,
        quarantine,
        feedback,
    ):
        main.add_command(module.command)


_register()
