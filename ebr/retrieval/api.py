"""The HTTP API (FastAPI) over the served version: search, realtime document changes, health.

Searches run in a bounded pool of worker threads under a deadline (engine.serving.request_timeout_s): past
it the request answers 504 and the executor stops at its next operator. Errors are JSON `ErrorBody`s
{"detail": ..., "position": ...}, their status codes in `ERRORS`. A well-formed POST /search (a body
`SearchBody` validates, Content-Type application/json) is answered by `SearchFastPath` without FastAPI's
routing, its answer serialised by orjson (`answer_json`: the response model's fields, not validated again);
anything else goes to the FastAPI route, whose answers are the reference. `app_from_env` builds the app of
each worker process of `ebr serve --workers N`.

Every route has a response model and documents its error answers; results carry their title and vertical
(`SearchService.describe`); `vertical` is, in /openapi.json, an enum of the served version's verticals
(regenerated when another version is served), and a search naming another one answers 400.
/docs (Swagger UI) and /redoc load their scripts from this server (fastapi-offline's assets): no CDN.

Writes (/documents) and /admin need `Authorization: Bearer <token>` (401 otherwise), the token coming from
$EBR_API_TOKEN or engine.serving.token_file; with no token configured they answer 403 unless
engine.serving.allow_unauthenticated_writes. Writes must be `Content-Type: application/json` (415), the
Host header must be one of engine.serving.allowed_hosts (400), and request bodies are strictly typed: no
bool or string where a number is expected, vectors finite in float32 with a nonzero, finite norm (422).
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ebr.ranking.served_log import ServedLog
from ebr.retrieval.config import EngineConfig
from ebr.retrieval.documents import UpdateError
from ebr.retrieval.executor import NNStats, QueryTimeoutError, RankingStats
from ebr.retrieval.service import HotSwapper, SearchError, SearchRequest, SearchResponse, SearchService

TOKEN_ENV = "EBR_API_TOKEN"
APP_ENV = "EBR_SERVE_APP"  # `ebr serve --workers N`: {"dataset", "overrides", "workers"} of app_from_env
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite_vector(values: list[float]) -> list[float]:
    """A vector finite in float32 whose norm (float64, of the float32 values) is nonzero and finite."""
    exact = np.asarray(values, dtype=np.float64)
    if not (np.isfinite(exact).all() and (np.abs(exact) <= FLOAT32_MAX).all()):
        raise ValueError("values must be finite float32 numbers")
    norm = float(np.linalg.norm(exact.astype(np.float32).astype(np.float64)))
    if values and not 0.0 < norm <= FLOAT32_MAX:
        raise ValueError("the vector's norm must be nonzero and finite in float32")
    return values


Vector = Annotated[list[StrictFloat], AfterValidator(_finite_vector)]
Payload = Annotated[StrictFloat, Field(allow_inf_nan=False)]
# a document's terms: "field:value" strings and [term, payload] pairs, or an object {term: payload or null}
Terms = list[str | tuple[str, Payload]] | dict[str, Payload | None]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]
STRICT = ConfigDict(extra="forbid")  # with the Strict* types: no bool or string as a number


class BodyLimit:
    """ASGI middleware answering 413 to a body over `max_bytes`: by its Content-Length, or as it streams.
    It stamps the request's arrival (`request.state.arrived`, time.monotonic()) for its deadline."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["arrived"] = time.monotonic()
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen, refused = 0, False

        async def counted() -> dict[str, Any]:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await self._refuse(send)
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message: dict[str, Any]) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class SearchFastPath:
    """ASGI middleware answering a well-formed POST /search without the framework's routing: a body that
    `SearchBody` validates (the route's own model, strictly), Content-Type application/json, and the search
    authorised, goes straight to `answer` (what the route runs); anything else (a bad body, a missing
    token, ...) is replayed to the FastAPI route, whose answers (422, 401, ...) are the reference. Errors of
    the search itself answer as the app's exception handlers do (`refusal`)."""

    def __init__(self, app: Any, answer: Any, may_search: Any, refusal: Any):
        self.app, self.answer, self.may_search, self.refusal = app, answer, may_search, refusal

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/search":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind != b"application/json" or not self.may_search(headers.get(b"authorization", b"")):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # a disconnect (or a 413 already sent)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            parsed = SearchBody.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return await self.app(scope, _replay(body, receive), send)
        try:
            content = await self.answer(parsed, scope["state"]["arrived"])
        except Exception as exc:
            response = self.refusal(exc)
            if response is None:
                raise
            return await response(scope, receive, send)
        length = str(len(content)).encode()
        headers_out = [(b"content-type", b"application/json"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers_out})
        await send({"type": "http.response.body", "body": content})


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that yields `body` once, then what `receive` yields (a disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def api_token(token_file: str | None) -> str | None:
    """The API token: $EBR_API_TOKEN, else the first line of `token_file`; None when neither is set."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token and token_file:
        try:
            token = FilePath(token_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ValueError(f"engine.serving.token_file {token_file!r} has no token: {exc}") from None
    return token or None


DocId = Annotated[int, Path(ge=-(2**63), lt=2**63, description="a 64-bit document id")]
StageName = Literal["query_policy", "relevance_filter", "ranker"]  # ebr.retrieval.stages.ORDER


class Context(BaseModel):
    model_config = STRICT
    city: str | None = Field(None, max_length=200)
    region: str | None = Field(None, max_length=200)
    country: str | None = Field(None, max_length=200)
    language: str | None = Field(None, max_length=50)


class SearchBody(BaseModel):
    model_config = STRICT | ConfigDict(
        json_schema_extra={
            "examples": [
                {"vertical": "people", "query_text": "john smith", "limit": 10},
                {"expr": "(and (term vertical:people) $text)", "query_text": "john", "explain": True},
                {"vertical": "people", "query_text": "john smith", "stages": {"ranker": False}},
            ]
        },
    )
    expr: str | None = Field(None, description="An expression; omit it to use the vertical's template")
    vertical: str | None = Field(None, max_length=100, description="One of the served version's verticals")
    query_text: str | None = Field(None, max_length=1_000)
    searcher_id: Int64 | None = None
    context: Context = Field(default_factory=Context)
    vector: Vector | dict[str, Vector] | None = Field(None, description="Explicit query embedding(s)")
    limit: StrictInt | None = Field(None, ge=1)
    order: Literal["score", "doc_id"] | None = None
    explain: StrictBool = False
    stages: dict[StageName, StrictBool] = Field(
        default_factory=dict,
        description="Per stage of the version: run it or not (omitted: engine.stages); e.g. {ranker: false} "
        "for the retrieval order",
    )


class DocumentBody(BaseModel):
    model_config = STRICT | ConfigDict(
        json_schema_extra={
            "examples": [{"doc_id": 42, "terms": ["vertical:people", "text:john", ["quality:static", 0.8]]}]
        },
    )
    doc_id: Int64
    terms: Terms = Field(default_factory=list)
    embeddings: dict[str, Vector] = Field(default_factory=dict)


class UpdateBody(BaseModel):
    model_config = STRICT
    terms: Terms | None = None
    embeddings: dict[str, Vector] = Field(default_factory=dict)


class Change(BaseModel):
    model_config = STRICT
    op: Literal["add", "update", "delete"]
    doc_id: Int64
    terms: Terms | None = None
    embeddings: dict[str, Vector] = Field(default_factory=dict)


class BatchBody(BaseModel):
    model_config = STRICT
    changes: list[Change]


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "expression: column 37: :radius must be between 0 and 2"}]}
    )
    detail: str | list[Problem] = Field(description="What is wrong; a 422 lists each problem of the body")
    position: int | None = Field(None, description="0-based offset in the expression of a query error")


class SearchResult(BaseModel):
    doc_id: int
    score: float | None = Field(description="Its best score under the expression's scoring operators")
    title: str | None = Field(description="The version's title of the document (None: added since)")
    vertical: str | None = Field(description="The document's vertical (its `vertical:` term)")


class SearchAnswer(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": "v0003",
                    "expr": "(and (term vertical:people) (or (term text:john) (nn unified :radius 0.24)))",
                    "total": 57,
                    "took_ms": 3.2,
                    "results": [{"doc_id": 1017, "score": 0.91, "title": "John Smith", "vertical": "people"}],
                    "stages": ["ranker"],
                    "nn_skipped": False,
                }
            ]
        }
    )
    version: str
    expr: str = Field(description="The expression that ran (template filled, $text expanded)")
    total: int = Field(description="Matches before the limit")
    total_exact: bool = Field(
        True, description="False: `total` is a lower bound (the executor stopped counting)"
    )
    took_ms: float
    results: list[SearchResult]
    stages: list[StageName] = Field(description="The version's stages that ran, in order")
    nn_skipped: bool = Field(description="The query selection policy dropped the expression's (nn) part")
    nn: list[NNStats] | None = Field(None, description="With explain: how each nn ran")
    ranking: list[RankingStats] | None = Field(None, description="With explain: the ranking operators")


ANSWER_FIELDS = tuple(SearchAnswer.model_fields)


class StoredDocument(BaseModel):
    doc_id: int
    terms: list[str]
    payloads: dict[str, float] = Field(description="The payloads of the terms that carry one")
    keys: list[str] = Field(description="The embedding keys the document has a vector under")


class Applied(BaseModel):
    version: str
    applied: int = Field(description="Changes applied (and logged)")


class Compacted(BaseModel):
    version: str
    generation: int = Field(description="The snapshot generation written")


class Health(BaseModel):
    status: Literal["ok", "read_only", "no_version"]
    version: str | None
    read_only_reason: str | None = Field(description="Why the served version takes no changes")
    last_error: str | None = Field(description="Why the last version served could not be loaded")


ERRORS = {
    400: "a bad expression or request (an unknown vertical, a bad term), or a Host not allowed",
    401: "no valid 'Authorization: Bearer <token>'",
    403: "writes are disabled: no API token is configured",
    404: "no such document",
    409: "the document exists",
    413: "the body, a document or a batch is over its limit",
    415: "the body is not Content-Type: application/json",
    422: "a malformed body: unknown fields, wrong types, a vector too long (the input is not echoed)",
    503: "no version is served, the server is read-only, or the pool is full (retry later)",
    504: "the search ran past engine.serving.request_timeout_s",
}


def answer_json(answer: dict[str, Any]) -> bytes:
    """A search answer (plain values or numpy scalars) as the JSON of `SearchAnswer`: its fields only, in
    its order, NaN as null, without validating the answer again (tests/retrieval/test_api_speed_paths.py)."""
    return orjson.dumps(
        {k: answer[k] for k in ANSWER_FIELDS if k in answer}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def shown_answer(service: SearchService, response: SearchResponse, explain: bool = False) -> bytes:
    """The JSON answer POST /search sends for `response` of `service`: each result with its title and
    vertical (`SearchService.describe`)."""
    answer = response.to_dict(explain=explain)
    shown = service.describe([r["doc_id"] for r in answer["results"]])
    answer["results"] = [r | d for r, d in zip(answer["results"], shown, strict=True)]
    return answer_json(answer)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status code's ErrorBody and what it means."""
    return {code: {"model": ErrorBody, "description": ERRORS[code]} for code in codes}


def with_verticals(schema: dict[str, Any], version: str | None, verticals: list[str]) -> dict[str, Any]:
    """The OpenAPI schema with `vertical` (of a search and of its results) an enum of `verticals`."""
    schema = copy.deepcopy(schema)
    models = schema["components"]["schemas"]
    if verticals:
        vertical = {"enum": verticals, "description": f"The verticals of version {version}"}
    else:
        none = f"Version {version} has no vertical with a template" if version else "No version is served"
        vertical = {"description": none}
    models["Vertical"] = {"type": "string", **vertical}
    for model in ("SearchBody", "SearchResult"):
        field = models[model]["properties"]["vertical"]
        field["anyOf"] = [{"$ref": "#/components/schemas/Vertical"}, {"type": "null"}]
    return schema


def create_app(
    config: EngineConfig, swapper: HotSwapper | None = None, watch: bool = True, dataset: str | None = None
) -> FastAPI:
    """The app over the version served for `dataset` (or `swapper`'s); `watch` polls serving.json for new
    versions (tests may drive `swapper.check()` themselves)."""
    if swapper is None:
        if dataset is None:
            raise TypeError("create_app: give the dataset to serve, or a swapper")
        swapper = HotSwapper(config, dataset)
    served = ServedLog.for_dataset(config.serving.log_results, getattr(swapper, "dataset", None))  # rating
    timeout = config.serving.request_timeout_s
    max_dims = config.serving.max_vector_dims
    token = api_token(config.serving.token_file)
    allow_open_writes = config.serving.allow_unauthenticated_writes

    def authorized(request: Request) -> bool:
        return bearer_ok(request.headers.get("authorization", "").encode("latin-1"))

    def bearer_ok(header: bytes) -> bool:
        scheme, _, given = header.partition(b" ")
        return (
            token is not None
            and scheme.lower() == b"bearer"
            and hmac.compare_digest(given.strip(), token.encode())
        )

    def may_search(header: bytes) -> bool:
        return not (config.serving.auth_search and token is not None and not bearer_ok(header))

    async def require_token(request: Request) -> None:
        if token is None and not allow_open_writes:
            raise SearchError(
                f"writes are disabled: no API token configured (${TOKEN_ENV} or engine.serving.token_file)",
                status=403,
            )
        if token is not None and not authorized(request):
            raise SearchError("a valid 'Authorization: Bearer <token>' header is needed", status=401)

    async def require_json(request: Request) -> None:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise SearchError("the body must be Content-Type: application/json", status=415)

    async def search_auth(request: Request) -> None:
        if config.serving.auth_search and token is not None and not authorized(request):
            raise SearchError("a valid 'Authorization: Bearer <token>' header is needed", status=401)

    write = [Depends(require_token), Depends(require_json)]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if watch:
            swapper.start()
        else:
            swapper.check()
        try:
            yield
        finally:
            for pool in list(executors):
                executors.pop(pool).shutdown(wait=False)
            swapper.stop()
            served.close()

    app = FastAPIOffline(
        title="EBR retrieval engine",
        description="Search the served version, change its documents in realtime (docs/engine.md).",
        openapi_tags=[
            {"name": "search", "description": "Queries: an expression or a vertical's calibrated template"},
            {"name": "documents", "description": "Realtime changes, logged before they are acknowledged"},
            {"name": "admin", "description": "Maintenance of the served version's realtime state"},
            {"name": "health", "description": "What is served, and why it may be read-only"},
        ],
        lifespan=lifespan,
    )
    # (the handlers below are bound when the first request builds the middleware stack)
    app.add_middleware(
        SearchFastPath,
        answer=lambda *args: answered(*args),
        may_search=may_search,
        refusal=lambda exc: refusal(exc),
    )
    app.add_middleware(BodyLimit, max_bytes=config.serving.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.serving.allowed_hosts)
    app.state.swapper = swapper

    def refusal(exc: Exception) -> JSONResponse | None:
        """The answer to a SearchError, an UpdateError or a QueryTimeoutError (None: another error)."""
        if isinstance(exc, SearchError):
            body: dict[str, Any] = {"detail": str(exc)}
            if exc.position is not None:
                body["position"] = exc.position
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse(body, status_code=exc.status, headers=headers)
        if isinstance(exc, UpdateError):
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        if isinstance(exc, QueryTimeoutError):
            return JSONResponse({"detail": f"search timed out after {timeout}s"}, status_code=504)
        return None

    @app.exception_handler(SearchError)
    async def _search_error(_: Request, exc: SearchError) -> JSONResponse | None:
        return refusal(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the problems without the inputs echoed back: a body may hold NaN or Infinity (not JSON)
        errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(UpdateError)
    async def _update_error(_: Request, exc: UpdateError) -> JSONResponse | None:
        return refusal(exc)

    @app.exception_handler(QueryTimeoutError)
    async def _timeout(_: Request, exc: QueryTimeoutError) -> JSONResponse | None:
        return refusal(exc)

    def check_vectors(vectors: list[Vector]) -> None:
        for v in vectors:
            if len(v) > max_dims:
                raise SearchError(f"a vector has {len(v)} dimensions, the limit is {max_dims}", status=422)

    # searches and writes run in their own bounded thread pools (not the one of sync endpoints such as
    # /healthz), as many threads as slots; a slot is held until the work really ends, even past a 504, so a
    # flood cannot pile up threads
    sizes = {"search": config.serving.max_concurrent_searches, "write": config.serving.max_concurrent_writes}
    pools = {name: threading.BoundedSemaphore(size) for name, size in sizes.items()}
    executors: dict[str, ThreadPoolExecutor] = {}

    def executor(pool: str) -> ThreadPoolExecutor:
        if pool not in executors:  # on the event loop's thread only
            executors[pool] = ThreadPoolExecutor(sizes[pool], thread_name_prefix=f"ebr-{pool}")
        return executors[pool]

    async def admitted(pool: str, fn: Any, deadline: float | None = None) -> Any:
        """`fn()` in a worker thread of `pool`, 503 at once when the pool is full, 504 past `deadline`."""
        slots = pools[pool]
        if not slots.acquire(blocking=False):
            raise SearchError(f"busy: {pool} capacity is in use, retry later", status=503)

        claimed = threading.Lock()  # by the worker when it starts, or by the caller if it never did

        def work() -> Any:
            if not claimed.acquire(blocking=False):
                return None  # given up before a thread took it; its slot is already released
            try:
                return fn()
            finally:
                slots.release()

        try:
            running = asyncio.get_running_loop().run_in_executor(executor(pool), work)
            if deadline is None:
                return await running
            # past the deadline: TimeoutError (504), the work left to finish (the executor stops it)
            return await asyncio.wait_for(running, max(deadline - time.monotonic(), 0.0))
        finally:
            if claimed.acquire(blocking=False):  # the work never started (cancelled waiting for a thread)
                slots.release()

    schemas: dict[tuple[str | None, tuple[str, ...]], dict[str, Any]] = {}  # of the version served

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with `vertical` an enum of the served version's verticals."""
        try:
            with swapper.service() as service:
                served = (service.version, tuple(service.verticals))
        except SearchError:
            served = (None, ())
        if served not in schemas:
            schemas.clear()
            schemas[served] = with_verticals(FastAPI.openapi(app), served[0], list(served[1]))
        return schemas[served]

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", tags=["health"], summary="Health and the served version")
    def healthz() -> Health:
        version = swapper.version
        read_only_reason = swapper.read_only_reason
        return Health(
            status="read_only" if read_only_reason else "ok" if version else "no_version",
            version=version,
            read_only_reason=read_only_reason,
            last_error=swapper.last_error,
        )

    @app.post(
        "/search",
        dependencies=[Depends(search_auth)],
        tags=["search"],
        summary="Search the served version",
        response_model=SearchAnswer,
        responses=errors(400, 401, 413, 422, 503, 504),
    )
    async def search(body: SearchBody, http: Request) -> Response:
        """Runs `expr`, or the calibrated template of `vertical` (else the version's default vertical),
        with the query text's terms and embeddings; each result carries its title and vertical."""
        return Response(await answered(body, http.state.arrived), media_type="application/json")

    async def answered(body: SearchBody, arrived: float) -> bytes:
        """The JSON answer of a search that arrived at `arrived` (time.monotonic()), in a worker thread of
        the search pool; SearchError (its status) or QueryTimeoutError past the deadline (504)."""
        deadline = arrived + timeout
        vector = body.vector
        check_vectors(list(vector.values()) if isinstance(vector, dict) else [vector] if vector else [])
        request = SearchRequest(
            expr=body.expr,
            vertical=body.vertical,
            query_text=body.query_text,
            searcher_id=body.searcher_id,
            context=body.context.model_dump(),
            vector=vector,
            limit=body.limit,
            order=body.order,
            stages=dict(body.stages),
        )

        def run() -> bytes:
            with swapper.service() as service:
                if body.vertical is not None and body.vertical not in service.verticals:
                    raise SearchError(
                        f"vertical {body.vertical!r} is not one of version {service.version}'s verticals "
                        f"({', '.join(service.verticals) or 'none'})"
                    )
                left = max(deadline - time.monotonic(), 0.0)  # parsing and reading the body included
                response = service.search(request, timeout_s=left)
                served.record(service, request, response)  # queued for the served-results log; never fails
                return shown_answer(service, response, body.explain)

        try:
            return await admitted("search", run, deadline)
        except TimeoutError as exc:
            raise QueryTimeoutError(str(exc)) from exc

    async def apply(changes: list[dict[str, Any]]) -> Applied:
        if len(changes) > config.max_batch_changes:
            raise SearchError(
                f"{len(changes)} changes, the limit per batch is {config.max_batch_changes}", status=413
            )
        check_vectors([v for c in changes for v in (c.get("embeddings") or {}).values()])
        max_doc = config.serving.max_document_bytes
        for change in changes:
            if len(json.dumps(change)) > max_doc:
                raise SearchError(f"document {change['doc_id']} is over {max_doc} bytes as JSON", status=413)

        def run() -> Applied:
            with swapper.service() as service:
                return Applied(version=service.version, applied=service.engine.apply(changes))

        return await admitted("write", run)

    documents = {"tags": ["documents"]}

    @app.get("/documents/{doc_id}", summary="A live document", responses=errors(404, 422, 503), **documents)
    def get_document(doc_id: DocId) -> StoredDocument:
        with swapper.service() as service:
            doc = service.engine.document(doc_id)
        if doc is None:
            raise SearchError(f"doc_id {doc_id} does not exist", status=404)
        return StoredDocument(**doc)

    @app.post(
        "/documents",
        status_code=201,
        dependencies=write,
        summary="Add a document",
        responses=errors(400, 401, 403, 409, 413, 415, 422, 503),
        **documents,
    )
    async def add_document(body: DocumentBody) -> Applied:
        return await apply([{"op": "add", **body.model_dump()}])

    @app.put(
        "/documents/{doc_id}",
        dependencies=write,
        summary="Replace a document's terms and/or embeddings",
        responses=errors(400, 401, 403, 404, 413, 415, 422, 503),
        **documents,
    )
    async def update_document(doc_id: DocId, body: UpdateBody) -> Applied:
        return await apply([{"op": "update", "doc_id": doc_id, **body.model_dump()}])

    @app.delete(
        "/documents/{doc_id}",
        dependencies=[Depends(require_token)],
        summary="Delete a document",
        responses=errors(401, 403, 404, 422, 503),
        **documents,
    )
    async def delete_document(doc_id: DocId) -> Applied:
        return await apply([{"op": "delete", "doc_id": doc_id}])

    @app.post(
        "/documents/batch",
        dependencies=write,
        summary="Apply changes in order, all or none",
        responses=errors(400, 401, 403, 404, 409, 413, 415, 422, 503),
        **documents,
    )
    async def batch(body: Annotated[BatchBody, Body()]) -> Applied:
        return await apply([c.model_dump() for c in body.changes])

    @app.post(
        "/admin/compact",
        dependencies=[Depends(require_token)],
        tags=["admin"],
        summary="Fold the change log into a new snapshot",
        responses=errors(401, 403, 503),
    )
    async def compact() -> Compacted:
        def run() -> Compacted:
            with swapper.service() as service:
                return Compacted(version=service.version, generation=service.engine.compact())

        return await admitted("write", run)

    return app


def served_overrides(overrides: list[str], workers: int) -> list[str]:
    """The engine overrides of each of `workers` server processes: with more than one, engine.store.shared
    (every process may write one state, a write taking the lock for its turn)."""
    if workers == 1:
        return overrides
    return [*overrides, "engine.store.shared=true"]


def app_from_env() -> FastAPI:
    """The app of one worker process of `ebr serve --workers N` (uvicorn's factory): the dataset and the
    overrides the command was given, from $EBR_SERVE_APP."""
    from ebr.retrieval.config import load_engine_config

    try:
        options = json.loads(os.environ[APP_ENV])
        dataset, overrides, workers = options["dataset"], list(options["overrides"]), int(options["workers"])
    except (KeyError, ValueError, TypeError) as exc:
        raise RuntimeError(f"${APP_ENV} must hold the options of `ebr serve` ({exc})") from None
    return create_app(load_engine_config(served_overrides(overrides, workers)), dataset=dataset)
