"""`ebr`: the one console command for the platform's flows and the tools around them."""

from __future__ import annotations

import os

import click

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
def main() -> None:
    """Embedding-based retrieval platform (Huang et al., KDD 2020), run on your search logs.

    State lives under $EBR_HOME (default: ebr_home/ in the project folder).
    """


def _register() -> None:
    from ebr.cli import (
        gc,
        ingest,
        mine,
        retrain,
        rollback,
        search,
        serve,
        simulate,
        train,
        versions,
    )
    from ebr.flows import prefect_api

    for module in (simulate, ingest, retrain, mine, train, search, serve, versions, rollback, gc):
        if module.command.name in prefect_api.FLOW_COMMANDS:  # their Prefect API dies with them
            module.command.callback = prefect_api.supervised(module.command.callback)
        main.add_command(module.command)


_register()
