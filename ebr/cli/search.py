"""`ebr search`: run one query language expression against the served version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ebr.cli.datasets import dataset_option, resolve_dataset


def _read_vector(vector: str | None, vector_file: Path | None) -> Any:
    """A query embedding (list) or embeddings per key ({key: list}) from --vector or --vector-file."""
    if vector is not None and vector_file is not None:
        raise click.BadParameter("give --vector or --vector-file, not both", param_hint="--vector")
    if vector_file is not None:
        if vector_file.suffix == ".npy":
            import numpy as np

            try:
                return np.load(vector_file).astype(float).reshape(-1).tolist()
            except (OSError, ValueError) as e:
                raise click.BadParameter(f"{vector_file}: {e}", param_hint="--vector-file") from None
        text, hint = vector_file.read_text(), "--vector-file"
    elif vector is not None:
        text, hint = vector, "--vector"
    else:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not JSON ({e})", param_hint=hint) from None
    if not isinstance(value, (list, dict)):
        raise click.BadParameter("expected a JSON list of numbers or an object {key: list}", param_hint=hint)
    return value


@click.command(name="search")
@click.option(
    "--expr",
    default=None,
    help="Expression, e.g. '(and (term location:chicago) (nn unified_hnm "
    ":radius 0.4 :nprobe 32))'. Default: the template of --vertical (in the version's manifest, "
    "calibrated at publication).",
)
@click.option(
    "--vertical",
    default=None,
    help="Vertical whose served template is used without --expr (default: the version's default vertical).",
)
@click.option("--query-text", default=None, help="Query text: fills $text and feeds the query tower.")
@click.option(
    "--searcher",
    "searcher_id",
    type=click.IntRange(-(2**63), 2**63 - 1),
    default=None,
    help="Searcher user id (query tower input, a 64-bit integer).",
)
@click.option("--city", default=None, help="Searcher's city at search time (query tower context).")
@click.option("--region", default=None, help="Searcher's region at search time.")
@click.option("--country", default=None, help="Searcher's country at search time.")
@click.option("--language", default=None, help="Searcher's language at search time.")
@click.option(
    "--vector", default=None, help="Explicit query embedding: JSON list, or JSON {key: list} per nn key."
)
@click.option(
    "--vector-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Explicit query embedding from a .npy or .json file.",
)
@click.option(
    "--k",
    "--limit",
    "limit",
    type=int,
    default=None,
    help="Number of results [default: engine.results.default_limit].",
)
@click.option(
    "--order", type=click.Choice(["score", "doc_id"]), default=None, help="Result order [default: score]."
)
@click.option(
    "--stage",
    "stage_switches",
    multiple=True,
    metavar="NAME=on|off",
    help="Run a stage of the version or not (query_policy, relevance_filter, ranker; repeatable) "
    "[default: engine.stages, all on].",
)
@click.option(
    "--no-rank", is_flag=True, help="The retrieval order: the version's ranker off (--stage ranker=off)."
)
@dataset_option
@click.option("--json", "as_json", is_flag=True, help='Print a JSON list of {"doc_id", "score"}.')
@click.option(
    "--explain", is_flag=True, help="Print how each nn ran (plan, codes to scan, filter size) to stderr."
)
@click.argument("overrides", nargs=-1)
def command(
    expr: str | None,
    vertical: str | None,
    query_text: str | None,
    searcher_id: int | None,
    city: str | None,
    region: str | None,
    country: str | None,
    language: str | None,
    vector: str | None,
    vector_file: Path | None,
    limit: int | None,
    order: str | None,
    stage_switches: tuple[str, ...],
    no_rank: bool,
    dataset: str | None,
    as_json: bool,
    explain: bool,
    overrides: tuple[str, ...],
) -> None:
    """Search the version served in a dataset (--dataset) with the engine's query language (docs/engine.md).

    The query embedding of each (nn KEY ...) comes from --vector/--vector-file or from the version's query
    tower applied to (--query-text, --searcher, context). Realtime changes made through `ebr serve` are
    included (read-only replay of the dataset's engine/<version>/). Scores are quantised cosine similarities
    (null for expressions without nn). OVERRIDES are Hydra overrides of conf/engine/default.yaml, e.g.
    `engine.limits.max_nprobe=256`.
    """
    from hydra.errors import HydraException

    from ebr.registry import CorruptVersionError
    from ebr.retrieval.config import load_engine_config
    from ebr.retrieval.executor import QueryTimeoutError
    from ebr.retrieval.service import SearchError, SearchRequest, SearchService
    from ebr.retrieval.store import CorruptLogError

    try:
        config = load_engine_config(list(overrides))
    except (HydraException, ValueError, TypeError) as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="OVERRIDES") from None
    request = SearchRequest(
        expr=expr,
        vertical=vertical,
        query_text=query_text,
        searcher_id=searcher_id,
        context={"city": city, "region": region, "country": country, "language": language},
        vector=_read_vector(vector, vector_file),
        limit=limit,
        order=order,
        stages=_stages(stage_switches, no_rank),
    )
    try:
        service = SearchService.open_served(config, writable=False, dataset=resolve_dataset(dataset))
    except (SearchError, CorruptVersionError, CorruptLogError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    try:
        response = service.search(request, timeout_s=config.serving.request_timeout_s)
        results = response.hits.as_dicts()
        shown = [] if as_json else service.describe([r["doc_id"] for r in results])
    except SearchError as e:
        raise click.ClickException(str(e)) from None
    except QueryTimeoutError as e:
        raise click.ClickException(f"{e} ({config.serving.request_timeout_s}s)") from None
    finally:
        service.close()
    if explain:
        for stats in response.hits.nn:
            click.echo(json.dumps(vars(stats)), err=True)
    if as_json:
        click.echo(json.dumps(results))
        return
    total = f"{response.hits.total}" if response.hits.total_exact else f"at least {response.hits.total}"
    click.echo(f"version {response.version}: {total} matches, {response.took_ms:.1f} ms")
    click.echo(f"expr: {response.expr}")
    if response.stages:
        skipped = " (nn skipped by the query policy)" if response.nn_skipped else ""
        click.echo(f"stages: {', '.join(response.stages)}{skipped}")
    for rank, (r, doc) in enumerate(zip(results, shown, strict=True), 1):
        score = "-" if r["score"] is None else f"{r['score']:.4f}"
        click.echo(f"{rank:>4}  {r['doc_id']:>12}  {score:>7}  {doc['title'] or ''}")


def _stages(switches: tuple[str, ...], no_rank: bool) -> dict[str, bool]:
    """--stage NAME=on|off and --no-rank as a request's stages."""
    from ebr.retrieval.stages import ORDER

    out: dict[str, bool] = {}
    for switch in switches:
        name, _, value = switch.partition("=")
        if name not in ORDER or value not in ("on", "off"):
            raise click.BadParameter(
                f"{switch!r}: give NAME=on|off with NAME one of {', '.join(ORDER)}", param_hint="--stage"
            )
        out[name] = value == "on"
    return out | ({"ranker": False} if no_rank else {})
