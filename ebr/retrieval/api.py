"""The HTTP API (FastAPI) over the served version: search, realtime document changes, health.

Searches run in worker threads under a deadline (engine.serving.request_timeout_s): past it the request
answers 504 and the executor stops at its next operator. Errors are JSON {"detail": ..., "position": ...}
with 400 (bad expression or request), 404 (unknown document), 409 (document exists), 422 (malformed body),
503 (nothing served) or 504 (timeout).

Writes (/documents) and /admin need `Authorization: Bearer <token>` (401 otherwise), the token coming from
$EBR_API_TOKEN or engine.serving.token_file; with no token configured they answer 403 unless
engine.serving.allow_unauthenticated_writes. Writes must be `Content-Type: application/json` (415), the
Host header must be one of engine.serving.allowed_hosts (400), and request bodies are strictly typed: no
bool or string where a number is expected, vectors finite in float32 with a nonzero, finite norm (422).
"""

from __future__ import annotations

import hmac
import json
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ebr.retrieval.config import EngineConfig
from ebr.retrieval.documents import UpdateError
from ebr.retrieval.executor import QueryTimeoutError
from ebr.retrieval.service import HotSwapper, SearchError, SearchRequest

TOKEN_ENV = "EBR_API_TOKEN"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite_vector(values: list[float]) -> list[float]:
    """A vector finite in float32 whose norm (float64, of the float32 values) is nonzero and finite."""
    if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in values):
        raise ValueError("values must be finite float32 numbers")
    norm = float(np.linalg.norm(np.asarray(values, dtype=np.float32).astype(np.float64)))
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


class Context(BaseModel):
    model_config = STRICT
    city: str | None = Field(None, max_length=200)
    region: str | None = Field(None, max_length=200)
    country: str | None = Field(None, max_length=200)
    language: str | None = Field(None, max_length=50)


class SearchBody(BaseModel):
    model_config = STRICT
    expr: str | None = Field(None, description="An expression; omit it to use the vertical's template")
    vertical: str | None = Field(None, max_length=100)
    query_text: str | None = Field(None, max_length=1_000)
    searcher_id: Int64 | None = None
    context: Context = Field(default_factory=Context)
    vector: Vector | dict[str, Vector] | None = Field(None, description="Explicit query embedding(s)")
    limit: StrictInt | None = Field(None, ge=1)
    order: Literal["score", "doc_id"] | None = None
    explain: StrictBool = False


class DocumentBody(BaseModel):
    model_config = STRICT
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


def create_app(config: EngineConfig, swapper: HotSwapper | None = None, watch: bool = True) -> FastAPI:
    """The app; `watch` polls serving.json for new versions (tests may drive `swapper.check()` themselves)."""
    swapper = swapper or HotSwapper(config)
    timeout = config.serving.request_timeout_s
    max_dims = config.serving.max_vector_dims
    token = api_token(config.serving.token_file)
    allow_open_writes = config.serving.allow_unauthenticated_writes

    def authorized(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.encode())
        )

    def require_token(request: Request) -> None:
        if token is None and not allow_open_writes:
            raise SearchError(
                f"writes are disabled: no API token configured (${TOKEN_ENV} or engine.serving.token_file)",
                status=403,
            )
        if token is not None and not authorized(request):
            raise SearchError("a valid 'Authorization: Bearer <token>' header is needed", status=401)

    def require_json(request: Request) -> None:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise SearchError("the body must be Content-Type: application/json", status=415)

    def search_auth(request: Request) -> None:
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
            swapper.stop()

    app = FastAPI(title="EBR retrieval engine", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=config.serving.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.serving.allowed_hosts)
    app.state.swapper = swapper

    @app.exception_handler(SearchError)
    async def _search_error(_: Request, exc: SearchError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if exc.position is not None:
            body["position"] = exc.position
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the problems without the inputs echoed back: a body may hold NaN or Infinity (not JSON)
        errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(UpdateError)
    async def _update_error(_: Request, exc: UpdateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(QueryTimeoutError)
    async def _timeout(_: Request, exc: QueryTimeoutError) -> JSONResponse:
        return JSONResponse({"detail": f"search timed out after {timeout}s"}, status_code=504)

    def check_vectors(vectors: list[Vector]) -> None:
        for v in vectors:
            if len(v) > max_dims:
                raise SearchError(f"a vector has {len(v)} dimensions, the limit is {max_dims}", status=422)

    # searches and writes run in their own bounded pools (not the one of sync endpoints such as /healthz);
    # a slot is held until the work really ends, even past a 504, so a flood cannot pile up threads
    pools = {
        "search": (
            threading.BoundedSemaphore(config.serving.max_concurrent_searches),
            anyio.CapacityLimiter(config.serving.max_concurrent_searches),
        ),
        "write": (
            threading.BoundedSemaphore(config.serving.max_concurrent_writes),
            anyio.CapacityLimiter(config.serving.max_concurrent_writes),
        ),
    }

    async def admitted(pool: str, fn: Any, deadline: float | None = None) -> Any:
        """`fn()` in a worker thread of `pool`, 503 at once when the pool is full, 504 past `deadline`."""
        slots, limiter = pools[pool]
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
            if deadline is None:
                return await anyio.to_thread.run_sync(work, limiter=limiter)
            with anyio.fail_after(max(deadline - time.monotonic(), 0.0)):
                return await anyio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
        finally:
            if claimed.acquire(blocking=False):  # the work never started (cancelled waiting for a thread)
                slots.release()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        version = swapper.version
        read_only_reason = swapper.read_only_reason
        return {
            "status": "read_only" if read_only_reason else "ok" if version else "no_version",
            "version": version,
            "read_only_reason": read_only_reason,
            "last_error": swapper.last_error,
        }

    @app.post("/search", dependencies=[Depends(search_auth)])
    async def search(body: SearchBody, http: Request) -> dict[str, Any]:
        deadline = http.state.arrived + timeout
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
        )

        def run() -> dict[str, Any]:
            with swapper.service() as service:
                left = max(deadline - time.monotonic(), 0.0)  # parsing and reading the body included
                return service.search(request, timeout_s=left).to_dict(explain=body.explain)

        try:
            return await admitted("search", run, deadline)
        except TimeoutError as exc:
            raise QueryTimeoutError(str(exc)) from exc

    async def apply(changes: list[dict[str, Any]]) -> dict[str, Any]:
        if len(changes) > config.max_batch_changes:
            raise SearchError(
                f"{len(changes)} changes, the limit per batch is {config.max_batch_changes}", status=413
            )
        check_vectors([v for c in changes for v in (c.get("embeddings") or {}).values()])
        max_doc = config.serving.max_document_bytes
        for change in changes:
            if len(json.dumps(change)) > max_doc:
                raise SearchError(f"document {change['doc_id']} is over {max_doc} bytes as JSON", status=413)

        def run() -> dict[str, Any]:
            with swapper.service() as service:
                applied = service.engine.apply(changes)
                return {"version": service.version, "applied": applied}

        return await admitted("write", run)

    @app.get("/documents/{doc_id}")
    def get_document(doc_id: DocId) -> dict[str, Any]:
        with swapper.service() as service:
            doc = service.engine.document(doc_id)
        if doc is None:
            raise SearchError(f"doc_id {doc_id} does not exist", status=404)
        return doc

    @app.post("/documents", status_code=201, dependencies=write)
    async def add_document(body: DocumentBody) -> dict[str, Any]:
        return await apply([{"op": "add", **body.model_dump()}])

    @app.put("/documents/{doc_id}", dependencies=write)
    async def update_document(doc_id: DocId, body: UpdateBody) -> dict[str, Any]:
        return await apply([{"op": "update", "doc_id": doc_id, **body.model_dump()}])

    @app.delete("/documents/{doc_id}", dependencies=[Depends(require_token)])
    async def delete_document(doc_id: DocId) -> dict[str, Any]:
        return await apply([{"op": "delete", "doc_id": doc_id}])

    @app.post("/documents/batch", dependencies=write)
    async def batch(body: Annotated[BatchBody, Body()]) -> dict[str, Any]:
        return await apply([c.model_dump() for c in body.changes])

    @app.post("/admin/compact", dependencies=[Depends(require_token)])
    async def compact() -> dict[str, Any]:
        def run() -> dict[str, Any]:
            with swapper.service() as service:
                return {"version": service.version, "generation": service.engine.compact()}

        return await admitted("write", run)

    return app
