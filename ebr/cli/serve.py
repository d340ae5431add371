"""`ebr serve`: the HTTP API of the retrieval engine over the served version, with hot reload."""

from __future__ import annotations

import copy
import json

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


@click.command(name="serve")
@click.option("--host", default=None, help="Interface to bind [default: engine.serving.host].")
@click.option("--port", type=int, default=None, help="Port [default: engine.serving.port].")
@dataset_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print the startup line {"url", "dataset", "read_only"} as JSON; server logs go to stderr.',
)
@click.argument("overrides", nargs=-1)
def command(
    host: str | None, port: int | None, dataset: str | None, as_json: bool, overrides: tuple[str, ...]
) -> None:
    """Serve POST /search, document changes (/documents) and /healthz for the version served in a dataset.

    A version newly published (the dataset's serving.json) is loaded in the background and swapped in
    without failing requests in flight. Realtime changes are logged under the dataset's engine/<version>/
    before they are acknowledged. OVERRIDES are Hydra overrides of conf/engine/default.yaml, e.g.
    `engine.serving.request_timeout_s=2`. Writes and /admin need `Authorization: Bearer $EBR_API_TOKEN`
    (or engine.serving.token_file); without a token the API is read-only. API reference: docs/engine.md.
    """
    import uvicorn
    from hydra.errors import HydraException

    from ebr.retrieval.api import TOKEN_ENV, api_token, create_app
    from ebr.retrieval.config import load_engine_config

    name = resolve_dataset(dataset)
    try:
        config = load_engine_config(list(overrides))
        app = create_app(config, dataset=name)
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
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)
