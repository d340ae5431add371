"""`ebr`: the one console command for the platform's flows and the tools around them."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ebr-platform")
def main() -> None:
    """Embedding-based retrieval platform (Huang et al., KDD 2020), run on your search logs.

    State lives under $EBR_HOME (default: ebr_home/ in the project folder).
    """


def _register() -> None:
    from ebr.commands import ingest, simulate

    for module in (simulate, ingest):
        main.add_command(module.command)


_register()
