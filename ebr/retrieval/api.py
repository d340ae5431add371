"""The HTTP API (FastAPI) over the served version: search, realtime document changes, health.

Searches run in worker threads under a deadline (engine.serving.request_timeout_s): past it the request
answers 504 and the executor stops at its next operator. Errors are JSON {"detail": ..., "position": ...}
with 400 (bad expression or request), 404 (unknown document), 409 (document exists), 422 (malformed body),
503 (nothing served) or 504 (timeout).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import Body, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ebr.retrieval.config import EngineConfig
from ebr.retrieval.documents import UpdateError
from ebr.retrieval.executor import QueryTimeoutError
from ebr.retrieval.service import HotSwapper, SearchError, SearchRequest

Vector = list[float]
# a document's terms: "field:value" strings and [term, payload] pairs, or an object {term: payload or null}
Terms = list[str | tuple[str, float]] | dict[str, float | None]
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
DocId = Annotated[int, Path(ge=-(2**63), lt=2**63, description="a 64-bit document id")]


class Context(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str | None = Field(None, max_length=200)
    region: str | None = Field(None, max_length=200)
    country: str | None = Field(None, max_length=200)
    language: str | None = Field(None, max_length=50)


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expr: str | None = Field(None, description="An expression; omit it to use the vertical's template")
    vertical: str | None = Field(None, max_length=100)
    query_text: str | None = Field(None, max_length=1_000)
    searcher_id: Int64 | None = None
    context: Context = Field(default_factory=Context)
    vector: Vector | dict[str, Vector] | None = Field(None, description="Explicit query embedding(s)")
    limit: int | None = Field(None, ge=1)
    order: Literal["score", "doc_id"] | None = None
    explain: bool = False


class DocumentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_id: Int64
    terms: Terms = Field(default_factory=list)
    embeddings: dict[str, Vector] = Field(default_factory=dict)


class UpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terms: Terms | None = None
    embeddings: dict[str, Vector] = Field(default_factory=dict)


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["add", "update", "delete"]
    doc_id: Int64
    terms: Terms | None = None
    embeddings: dict[str, Vector] = Field(default_factory=dict)


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    changes: list[Change]


def create_app(config: EngineConfig, swapper: HotSwapper | None = None, watch: bool = True) -> FastAPI:
    """The app; `watch` polls serving.json for new versions (tests may drive `swapper.check()` themselves)."""
    swapper = swapper or HotSwapper(config)
    timeout = config.serving.request_timeout_s
    max_dims = config.serving.max_vector_dims

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
    app.state.swapper = swapper

    @app.exception_handler(SearchError)
    async def _search_error(_: Request, exc: SearchError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if exc.position is not None:
            body["position"] = exc.position
        return JSONResponse(body, status_code=exc.status)

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

    async def in_thread(fn: Any, *args: Any) -> Any:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        version = swapper.version
        return {
            "status": "ok" if version else "no_version",
            "version": version,
            "last_error": swapper.last_error,
        }

    @app.post("/search")
    async def search(body: SearchBody) -> dict[str, Any]:
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
                return service.search(request, timeout_s=timeout).to_dict(explain=body.explain)

        try:
            return await in_thread(run)
        except TimeoutError as exc:
            raise QueryTimeoutError(str(exc)) from exc

    async def apply(changes: list[dict[str, Any]]) -> dict[str, Any]:
        if len(changes) > config.max_batch_changes:
            raise SearchError(
                f"{len(changes)} changes, the limit per batch is {config.max_batch_changes}", status=413
            )
        check_vectors([v for c in changes for v in (c.get("embeddings") or {}).values()])

        def run() -> dict[str, Any]:
            with swapper.service() as service:
                applied = service.engine.apply(changes)
                return {"version": service.version, "applied": applied}

        return await anyio.to_thread.run_sync(run)

    @app.get("/documents/{doc_id}")
    def get_document(doc_id: DocId) -> dict[str, Any]:
        with swapper.service() as service:
            doc = service.engine.document(doc_id)
        if doc is None:
            raise SearchError(f"doc_id {doc_id} does not exist", status=404)
        return doc

    @app.post("/documents", status_code=201)
    async def add_document(body: DocumentBody) -> dict[str, Any]:
        return await apply([{"op": "add", **body.model_dump()}])

    @app.put("/documents/{doc_id}")
    async def update_document(doc_id: DocId, body: UpdateBody) -> dict[str, Any]:
        return await apply([{"op": "update", "doc_id": doc_id, **body.model_dump()}])

    @app.delete("/documents/{doc_id}")
    async def delete_document(doc_id: DocId) -> dict[str, Any]:
        return await apply([{"op": "delete", "doc_id": doc_id}])

    @app.post("/documents/batch")
    async def batch(body: Annotated[BatchBody, Body()]) -> dict[str, Any]:
        return await apply([c.model_dump() for c in body.changes])

    @app.post("/admin/compact")
    async def compact() -> dict[str, Any]:
        def run() -> dict[str, Any]:
            with swapper.service() as service:
                return {"version": service.version, "generation": service.engine.compact()}

        return await anyio.to_thread.run_sync(run)

    return app
