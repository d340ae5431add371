"""`ebr serve`: the HTTP API of the retrieval engine over the served version, with hot reload."""

from __future__ import annotations

import click


@click.command(name="serve")
@click.option("--host", default=None, help="Interface to bind [default: engine.serving.host].")
@click.option("--port", type=int, default=None, help="Port [default: engine.serving.port].")
@click.argument("overrides", nargs=-1)
def command(host: str | None, port: int | None, overrides: tuple[str, ...]) -> None:
    """Serve POST /search, document changes (/documents) and /healthz for the version served in $EBR_HOME.

    A version newly published (serving.json) is loaded in the background and swapped in without failing
    requests in flight. Realtime changes are logged under $EBR_HOME/engine/<version>/ before they are
    acknowledged. OVERRIDES are Hydra overrides of conf/engine/default.yaml, e.g.
    `engine.serving.request_timeout_s=2`. Writes and /admin need `Authorization: Bearer $EBR_API_TOKEN`
    (or engine.serving.token_file); without a token the API is read-only. API reference: docs/engine.md.
    """
    import uvicorn
    from hydra.errors import HydraException

    from ebr.retrieval.api import TOKEN_ENV, api_token, create_app
    from ebr.retrieval.config import load_engine_config

    try:
        config = load_engine_config(list(overrides))
        app = create_app(config)
    except (HydraException, ValueError, TypeError) as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="OVERRIDES") from None
    if api_token(config.serving.token_file) is None and not config.serving.allow_unauthenticated_writes:
        click.echo(f"no API token (${TOKEN_ENV} or engine.serving.token_file): serving read-only", err=True)
    uvicorn.run(app, host=host or config.serving.host, port=port or config.serving.port, log_level="info")
