"""Serving one version: requests -> expression + query embeddings -> engine -> results.

`SearchService` binds a version folder to its engine (base index + realtime state under
`$EBR_HOME/engine/<version>/`), its query towers (loaded on first use) and its expression templates: per
vertical, the expression the version was calibrated and gated with (the manifest's `serving` section), unless
`engine.templates.<vertical>` overrides it. The recall gate, the benchmarks, `ebr search` and `ebr serve` all
answer through `search_many` / `search`: what is measured is what is served. `HotSwapper` holds the service
of the served version and replaces it when serving.json names a new version: the new one is loaded
completely first, then the reference is swapped; requests in flight finish on the old one, which is closed
(its write lock released) when its last request ends. A version served again while its retired engine still
holds the lock opens read-only and takes the lock at its first write or the swapper's next check after it is
freed; `HotSwapper.read_only_reason` says why it is not writable meanwhile. With `engine.store.shared`
(several server processes) no engine keeps the lock: every one writes, taking it per write (store.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ebr import home, registry
from ebr.retrieval.config import EngineConfig
from ebr.retrieval.documents import unit_vector
from ebr.retrieval.executor import ORDERS, ExecutionError, Hits, check_executable
from ebr.retrieval.query import Node, QueryError, expand_text, parse_cached, vector_nodes
from ebr.retrieval.retrievers import RetrieverSpec, index_queries
from ebr.retrieval.stages import ORDER, Retrieved, load_stages, take
from ebr.retrieval.store import Engine
from ebr.retrieval.terms import term_value

log = logging.getLogger(__name__)


class SearchError(ValueError):
    """A request that cannot be served; `status` is its HTTP status, `position` the query offset if any."""

    def __init__(self, message: str, status: int = 400, position: int | None = None):
        super().__init__(message)
        self.status = status
        self.position = position


@dataclass
class SearchRequest:
    expr: str | None = None  # an expression; None: the template of `vertical`
    vertical: str | None = None
    query_text: str | None = None
    searcher_id: int | None = None
    context: Mapping[str, str | None] = field(default_factory=dict)  # city, region, country, language
    vector: Sequence[float] | Mapping[str, Sequence[float]] | None = None  # explicit query embedding(s)
    limit: int | None = None
    order: str | None = None
    stages: Mapping[str, bool] = field(default_factory=dict)  # per stage name: run it (engine.stages else)


@dataclass
class SearchResponse:
    version: str
    expr: str  # the expression that ran (template filled, $text expanded, after the query policy)
    hits: Hits
    took_ms: float
    stages: list[str] = field(default_factory=list)  # the version's stages that ran, in order
    nn_skipped: bool = False  # the query policy dropped the expression's (nn) part

    def to_dict(self, explain: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "expr": self.expr,
            "total": self.hits.total,
            "total_exact": self.hits.total_exact,  # False: total is a lower bound (executor's push-down)
            "took_ms": round(self.took_ms, 3),
            "results": self.hits.as_dicts(),
            "stages": list(self.stages),
            "nn_skipped": self.nn_skipped,
        }
        if explain:
            out["nn"] = [vars(s) for s in self.hits.nn]
            out["ranking"] = [vars(s) for s in self.hits.ranking]
        return out


def state_dir(dataset: str, version: str) -> Path:
    """Where the realtime state (log, snapshots) of a dataset's served version lives; never inside the
    version."""
    return home.engine_dir(dataset) / version


def version_name(manifest: Mapping[str, Any], version_dir: Path) -> str:
    """The version's name; a staged candidate (not yet named) is `candidate-<run_id>`."""
    name = manifest.get("version", version_dir.name)
    return str(name) if name else f"candidate-{manifest.get('run_id') or version_dir.name}"


class SearchService:
    """One version's engine, query towers and templates."""

    def __init__(self, version_dir: Path, engine: Engine, config: EngineConfig, manifest: Mapping[str, Any]):
        self.version_dir = version_dir
        self.version = version_name(manifest, version_dir)
        self.engine = engine
        self.config = config
        self.manifest = manifest
        self._encoders: dict[str, Any] = {}
        self._encoder_lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self._state_lock = threading.Lock()
        self.stages = load_stages(version_dir, manifest)  # name -> stage (ebr/retrieval/stages.py)

    @classmethod
    def open(
        cls,
        version_dir: Path,
        config: EngineConfig,
        writable: bool,
        verify: bool = True,
        warm: bool = False,
        fall_back_read_only: bool = False,
        *,
        dataset: str,
    ) -> SearchService:
        """Open a version folder; `verify` checks every file against the manifest first, `warm` loads the
        query towers and the titles now rather than on first use (a server does, so that no request pays
        for it); `fall_back_read_only`: see `Engine.open`; the realtime state is `dataset`'s (`state_dir`)."""
        manifest = (
            registry.verify_version(version_dir)
            if verify
            else json.loads((version_dir / registry.MANIFEST).read_text())
        )
        engine_dir = version_dir / "engine"
        if not (engine_dir / "meta.json").is_file():
            raise SearchError(f"{engine_dir}: this version has no engine index", status=503)
        engine = Engine.open(
            engine_dir,
            state_dir(dataset, version_name(manifest, version_dir)),
            config.store,
            writable,
            fall_back_read_only,
        )
        service = cls(version_dir, engine, config, manifest)
        try:
            if warm:
                for tower in sorted((version_dir / "towers").glob("*/config.json")):
                    service._encoder(tower.parent.name)
                service.describe([])  # reads the titles now
        except BaseException:
            engine.close()  # a service never served must not keep the write lock
            raise
        return service

    @classmethod
    def open_served(cls, config: EngineConfig, writable: bool, dataset: str) -> SearchService:
        """The service of the version the dataset's serving.json names (checksums verified)."""
        try:
            version_dir = registry.served_version_dir(dataset, verify=False)
        except registry.NoServedVersionError as exc:
            raise SearchError(str(exc), status=503) from exc
        return cls.open(version_dir, config, writable, dataset=dataset)

    def close(self) -> None:
        self.engine.close()

    # ----- in-flight accounting for hot reload
    def acquire(self) -> None:
        with self._state_lock:
            self._inflight += 1

    def release(self) -> None:
        with self._state_lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self.close()

    def retire(self) -> None:
        """Close once the requests in flight are done (now if there are none)."""
        with self._state_lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self.close()

    # ----- requests
    @property
    def serving(self) -> Mapping[str, Any]:
        """Per vertical: the retriever, its expression and its calibration (the manifest's `serving`)."""
        return (self.manifest.get("serving") or {}).get("verticals") or {}

    @property
    def verticals(self) -> list[str]:
        """The verticals this version has an expression for (its own or a configured one)."""
        return sorted(set(self.serving) | set(self.config.templates))

    @property
    def default_vertical(self) -> str | None:
        """engine.default_vertical, else the version's (the most searched vertical of its logs)."""
        configured = self.config.default_vertical
        chosen = configured or (self.manifest.get("serving") or {}).get("default_vertical")
        if chosen is None and len(self.verticals) == 1:
            return self.verticals[0]
        return chosen

    @functools.cached_property
    def _shown(self) -> tuple[np.ndarray, pa.Table, dict[str, str]]:
        """The version's documents.parquet sorted by doc id: the ids as an array, the titles and verticals,
        and each vertical by its `vertical:` term. Read without pyarrow's numpy conversions: they import
        pandas, 0.1-0.3 s of a cold `ebr search` (docs/benchmarks.md#ebr-search-cold-start)."""
        columns = ["doc_id", "vertical", "title"]
        path = self.version_dir / "documents.parquet"
        table = pq.ParquetFile(path).read(columns=columns).sort_by("doc_id")
        ids = np.fromiter(table["doc_id"].to_pylist(), dtype=np.int64, count=table.num_rows)
        verticals = [*table["vertical"].unique().to_pylist(), *self.verticals]
        names = {f"vertical:{term_value(v)}": v for v in verticals if v}
        return ids, table.select(["title", "vertical"]), names

    def describe(self, doc_ids: Sequence[int]) -> list[dict[str, str | None]]:
        """What a caller shows of each document: its `title` and `vertical` in the version's
        documents.parquet; for a document added since, no title and the vertical of its `vertical:` term."""
        ids, shown, names = self._shown
        wanted = np.asarray(doc_ids, dtype=np.int64)
        rows = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
        known = ids[rows] == wanted if len(ids) else np.zeros(len(wanted), dtype=bool)
        out: list[dict[str, str | None]] = shown.take(rows).to_pylist() if len(ids) else [{}] * len(wanted)
        for i in np.flatnonzero(~known).tolist():  # added since the version was built
            doc = self.engine.document(int(wanted[i]))
            term = next((t for t in doc["terms"] if t.startswith("vertical:")), None) if doc else None
            out[i] = {"title": None, "vertical": None if term is None else names.get(term, term[9:])}
        return out

    def template(self, vertical: str) -> str:
        """The expression template of `vertical`: engine.templates.<vertical> (its `{key}` the vertical's
        retriever key), else the one the version was calibrated with."""
        served = self.serving.get(vertical) or {}
        text = self.config.templates.get(vertical) or served.get("expr")
        if text is None:
            raise SearchError(
                f"vertical {vertical!r} has no expression in version {self.version} "
                f"(verticals: {', '.join(self.verticals) or 'none'}); give an expression"
            )
        if "{key}" in text:
            keys = sorted(self.engine.index.fields)
            key = served.get("key") or (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise SearchError(f"the template of {vertical!r} needs {{key}} but this version names none")
            text = text.replace("{key}", key)
        return text

    def expression(self, request: SearchRequest) -> Node:
        """The parsed expression of a request: its own, or its vertical's template, with $text expanded."""
        text = request.expr
        if text is None:
            vertical = request.vertical or self.default_vertical
            if vertical is None:
                raise SearchError(f"give a vertical ({', '.join(self.verticals) or 'none'}) or an expression")
            text = self.template(vertical)
        try:
            root = expand_text(parse_cached(text, self.config.limits), request.query_text, self.config.limits)
            check_executable(self.engine.index, root)
        except (QueryError, ExecutionError) as exc:
            raise SearchError(f"expression: {exc}", position=exc.position) from exc
        return root

    def query_vectors(
        self, roots: Sequence[Node], requests: Sequence[SearchRequest]
    ) -> list[dict[str, np.ndarray]]:
        """A unit query embedding for every nn and rerank key of each expression: given explicitly, or from
        the query towers, which encode the requests of a key in one batch."""
        wanted: dict[str, list[int]] = {}
        out: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for i, (root, request) in enumerate(zip(roots, requests, strict=True)):
            for key in sorted({n.key for n in vector_nodes(root)}):
                d = self.engine.index.fields[key].d
                given = request.vector.get(key) if isinstance(request.vector, Mapping) else request.vector
                if given is not None:
                    out[i][key] = unit_vector(given, d, f"vector for embedding key {key!r}", SearchError)
                elif request.query_text is None and request.searcher_id is None:
                    raise SearchError(
                        f"embedding key {key!r} needs a query embedding: give query text, a searcher or a "
                        "vector"
                    )
                else:
                    wanted.setdefault(key, []).append(i)
        for key, rows in wanted.items():
            encoded = self._encode(key, [_query_input(requests[i]) for i in rows])
            d = self.engine.index.fields[key].d
            for i, vector in zip(rows, encoded, strict=True):
                out[i][key] = unit_vector(vector, d, f"query embedding of {key!r}", SearchError)
        return out

    def _encode(self, key: str, queries: list[Any]) -> np.ndarray:
        """Query embeddings of `key`: its query tower, or an ensemble's weighted concatenation of towers."""
        if (self.version_dir / "towers" / key).is_dir():
            return self._encoder(key).encode(queries)
        spec = (self.manifest.get("retrievers") or {}).get(key)
        if spec and spec.get("kind") == "ensemble":
            ensemble = RetrieverSpec.from_dict(spec)
            return index_queries(ensemble, {k: self._encoder(k).encode(queries) for k in ensemble.keys})
        raise SearchError(f"nn key {key!r} has no query tower in version {self.version}: pass a vector")

    def _encoder(self, key: str) -> Any:
        with self._encoder_lock:
            if key not in self._encoders:
                from ebr.models.export import load_query_encoder

                self._encoders[key] = load_query_encoder(self.version_dir / "towers" / key)
            return self._encoders[key]

    def search(self, request: SearchRequest, timeout_s: float | None = None) -> SearchResponse:
        return self.search_many([request], timeout_s)[0]

    def search_many(
        self, requests: Sequence[SearchRequest], timeout_s: float | None = None
    ) -> list[SearchResponse]:
        """Answer requests in order: the query policy, the engine, then the relevance filter and the ranker
        (the version's stages that are on); queries of the same tower are encoded together. `timeout_s`
        bounds the whole call from its start (parsing, expansion and embedding included): the engine stops
        at it."""
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        plans = []
        for request in requests:
            limit = self.config.default_limit if request.limit is None else request.limit
            if not 1 <= limit <= self.config.max_limit:
                raise SearchError(f"limit must be between 1 and {self.config.max_limit}, got {limit}")
            order = request.order or self.config.order
            if order not in ORDERS:
                raise SearchError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
            unknown = sorted(set(request.stages) - set(ORDER))
            if unknown:
                raise SearchError(f"unknown stage {unknown[0]!r} (stages: {', '.join(ORDER)})")
            on = [n for n in self.stages if request.stages.get(n, getattr(self.config.stages, n))]
            root = self.expression(request)
            asked = len(vector_nodes(root))
            if "query_policy" in on:
                root = self.stages["query_policy"].select(request, root)
            plans.append((root, limit, order, on, len(vector_nodes(root)) < asked))
        vectors = self.query_vectors([p[0] for p in plans], requests)
        encoded_ms = 1000 * (time.monotonic() - started) / max(len(requests), 1)
        out = []
        for (root, limit, order, on, skipped), request, query_vectors in zip(
            plans, requests, vectors, strict=True
        ):
            begun = time.monotonic()
            wanted = max([limit] + [self.stages[n].candidates for n in on if n != "query_policy"])
            hits = self.engine.search(
                root,
                query_vectors,
                limit=wanted,
                order=order,
                deadline=deadline,
                costs=self.config.planner,
                query_text=request.query_text,
                bm25=self.config.bm25,
            )
            took = encoded_ms + 1000 * (time.monotonic() - begun)
            out.append(SearchResponse(self.version, str(root), hits, took, on, skipped))
        for name in ORDER[1:]:  # the stages after retrieval, each on the batch of requests that runs it
            rows = [i for i, r in enumerate(out) if name in r.stages]
            if not rows:
                continue
            begun = time.monotonic()
            batch = [Retrieved(requests[i], plans[i][0], out[i].hits, vectors[i]) for i in rows]
            for i, hits in zip(rows, self.stages[name].apply(self, batch), strict=True):
                out[i].hits = hits
                out[i].took_ms += 1000 * (time.monotonic() - begun) / len(rows)
        for response, plan in zip(out, plans, strict=True):
            response.hits = take(response.hits, slice(plan[1]))  # the limit, once the stages ran
        return out


def _query_input(request: SearchRequest) -> Any:
    from ebr.models.export import QueryInput  # the towers' format is owned by ebr/models/

    context = request.context or {}
    return QueryInput(
        query_text=request.query_text or "",
        user_id=request.searcher_id,
        city=context.get("city"),
        region=context.get("region"),
        country=context.get("country"),
        language=context.get("language"),
    )


class HotSwapper:
    """The service of the served version, replaced without failing requests when a new version is served."""

    def __init__(self, config: EngineConfig, dataset: str, writable: bool = True):
        self.config = config
        self.dataset = dataset
        self.writable = writable
        self.last_error: str | None = None
        self._failed: str | None = (
            None  # a version that failed to load is not retried until another is served
        )
        self._service: SearchService | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str | None:
        service = self._service
        return None if service is None else service.version

    @property
    def read_only_reason(self) -> str | None:
        """Why the served version takes no changes though this swapper should write, or None."""
        service = self._service
        if not self.writable or service is None or service.engine.writable:
            return None
        return service.engine.read_only_reason

    @contextlib.contextmanager
    def service(self) -> Iterator[SearchService]:
        """The current service, kept open for the duration of the block even if a swap happens meanwhile."""
        with self._lock:
            service = self._service
            if service is None:
                raise SearchError(self.last_error or "no version is served", status=503)
            service.acquire()
        try:
            yield service
        finally:
            service.release()

    def check(self) -> bool:
        """Load and swap in the served version if it changed; returns whether a swap happened. A served
        engine waiting for its write lock takes it here once it is free."""
        served = self._service
        if self.writable and served is not None and not served.engine.writable:
            try:
                served.engine.take_write_lock()
            except Exception as exc:
                log.error("version %s: cannot take the write lock: %s", served.version, exc)
        try:
            wanted = registry.served_version(self.dataset)
        except (OSError, ValueError, KeyError) as exc:
            self.last_error = f"{home.dataset_dir(self.dataset) / registry.POINTER}: unreadable ({exc})"
            return False
        if wanted is None or wanted in (self.version, self._failed):
            return False
        try:
            fresh = self._open(wanted)
        except Exception as exc:  # keep serving the old version; /healthz reports the error
            self.last_error, self._failed = f"version {wanted}: {exc}", wanted
            log.error("cannot load version %s: %s", wanted, exc)
            return False
        with self._lock:
            old, self._service = self._service, fresh
        self.last_error = None
        if old is not None:
            old.retire()
        log.info("serving version %s", wanted)
        return True

    def _open(self, version: str) -> SearchService:
        folder = home.versions_dir(self.dataset) / version
        service = SearchService.open(
            folder, self.config, self.writable, warm=True, fall_back_read_only=True, dataset=self.dataset
        )
        if self.writable and not service.engine.writable:
            log.warning("version %s: serving read-only for now: %s", version, service.engine.read_only_reason)
        return service

    def start(self) -> None:
        """Load the served version now, then watch serving.json in a background thread."""
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="ebr-engine-reload", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.config.serving.reload_poll_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            old, self._service = self._service, None
        if old is not None:
            old.retire()
