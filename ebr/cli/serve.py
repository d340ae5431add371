"""`ebr serve`: the HTTP API of the retrieval engine over the served version, with hot reload."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


@click.command(name="serve")
@click.option("--host", default=None, help="Interface to bind [default: engine.serving.host].")
@click.option("--port", type=int, default=None, help="Port [default: engine.serving.port].")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Server processes over the version [default: engine.serving.workers]; more than 1 runs each with "
    "engine.store.shared=true.",
)
@dataset_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the startup line {"url", "dataset", "read_only"} as JSON; server logs go to stderr.',
)
@click.argument("overrides", nargs=-1)
def command(
    host: str | None,
    port: int | None,
    workers: int | None,
    dataset: str | None,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Serve POST /search, document changes (/documents) and /healthz for the version served in a dataset.

    A version newly published (the dataset's serving.json) is loaded in the background and swapped in
    without failing requests in flight. Realtime changes are logged under the dataset's engine/<version>/
    before they are acknowledged. OVERRIDES are Hydra overrides of conf/engine/default.yaml, e.g.
    `engine.serving.request_timeout_s=2`. Writes and /admin need `Authorization: Bearer $EBR_API_TOKEN`
    (or engine.serving.token_file); without a token the API is read-only. With --workers N > 1, N processes
    accept on the port, each its own app over the version (engine.store.shared: writes take turns). API
    reference: docs/engine.md.
    """
    import uvicorn
    from hydra.errors import HydraException

    from ebr.retrieval.api import APP_ENV, TOKEN_ENV, api_token, create_app, served_overrides
    from ebr.retrieval.config import load_engine_config

    name = resolve_dataset(dataset)
    try:
        config = load_engine_config(list(overrides))
        workers = workers or config.serving.workers
        if workers == 1:
            app: Any = create_app(config, dataset=name)
        else:  # each worker process builds its app from the same options (ebr.retrieval.api.app_from_env)
            load_engine_config(served_overrides(list(overrides), workers))  # checked here, once
            os.environ[APP_ENV] = json.dumps(
                {"dataset": name, "overrides": list(overrides), "workers": workers}
            )
            app = "ebr.retrieval.api:app_from_env"
    except (HydraException, ValueError, TypeError) as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="OVERRIDES") from None
    read_only = (
        api_token(config.serving.token_file) is None and not config.serving.allow_unauthenticated_writes
    )
    if read_only:
        click.echo(f"no API token (${TOKEN_ENV} or engine.serving.token_file): serving read-only", err=True)
    host, port = host or config.serving.host, port or config.serving.port
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if as_json:  # stdout: the startup line only (uvicorn writes its access log there)
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
        click.echo(json.dumps({"url": f"http://{host}:{port}", "dataset": name, "read_only": read_only}))
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=log_config,
        access_log=config.serving.access_log,
        workers=workers,
        factory=workers > 1,
    )
