"""Durable realtime updates: a write-ahead log over an immutable base index, compacted into snapshots.

The state of the engine for one published version lives beside it, never inside the immutable version folder:

    $EBR_HOME/engine/<version>/
        CURRENT          {"generation": g}; absent means g = 0: the version's own engine/ folder
        snapshots/<g>/   compacted index of generation g >= 1 (same format as engine/)
        wal-<g>.log      every change acknowledged since snapshot g, in order
        LOCK             flock-ed by the one process allowed to write

A change is validated, appended to the log and fsync-ed, then applied in memory, and only then acknowledged,
so it is visible to the next query and survives a crash. Opening replays the log over the snapshot. A torn
last record (a crash in the middle of an append, never acknowledged) is cut off; a damaged record followed
by more data is corruption and stops the open with the file and offset. Compaction writes generation g+1
under a temporary name, renames it, starts an empty log, then moves CURRENT: a crash at any point leaves a
complete generation.

Log record: 4-byte little-endian payload length, 4-byte CRC32 of the payload, payload = UTF-8 JSON
{"op": "add"|"update"|"delete", "doc_id", "terms", "embeddings": {key: base64 float32 little-endian}}, plus
"payloads": {term: float32 value} when some of the terms carry one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebr.config import BM25Params, PlannerCosts, StoreConfig, engine_defaults
from ebr.io import atomic_write_text, fsync_dir
from ebr.retrieval.documents import (
    Change,
    Delete,
    Document,
    DocumentExistsError,
    DocumentNotFoundError,
    TermsInput,
    Update,
    UpdateError,
    check_doc_id,
)
from ebr.retrieval.executor import Hits, execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.query import Node

_HEADER = struct.Struct("<II")


class CorruptLogError(RuntimeError):
    """A write-ahead log whose records cannot be trusted."""


class EngineLockedError(RuntimeError):
    """Another process holds the write lock of this engine state."""


class ReadOnlyEngineError(UpdateError):
    """A change sent to an engine opened read-only (another process writes this version's state)."""

    status = 503


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# ----- log records
def encode_change(change: Change) -> bytes:
    if isinstance(change, Delete):
        record: dict[str, Any] = {"op": "delete", "doc_id": change.doc_id}
    else:
        record = {
            "op": "add" if isinstance(change, Document) else "update",
            "doc_id": change.doc_id,
            "terms": change.terms,
            "embeddings": {
                k: base64.b64encode(v.astype("<f4").tobytes()).decode() for k, v in change.embeddings.items()
            },
        }
        if change.payloads:
            record["payloads"] = change.payloads  # float32 values: exact as JSON numbers
    payload = json.dumps(record, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_change(payload: bytes) -> Change:
    record = json.loads(payload)
    if record["op"] == "delete":
        return Delete(int(record["doc_id"]))
    embeddings = {
        k: np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32)
        for k, v in record["embeddings"].items()
    }
    payloads = {str(t): float(v) for t, v in record.get("payloads", {}).items()}
    if record["op"] == "add":
        return Document(int(record["doc_id"]), list(record["terms"]), embeddings, payloads)
    return Update(int(record["doc_id"]), record["terms"], embeddings, payloads)


def read_log(path: Path, repair: bool) -> list[Change]:
    """The changes of a log; a torn last record is dropped (and cut off the file when `repair`)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    changes: list[Change] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            break  # torn header
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data):
            break  # torn payload
        payload = data[offset + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            if end == len(data):
                break  # the last record, torn
            raise CorruptLogError(f"{path}: record at byte {offset} fails its checksum and is not the last")
        try:
            changes.append(decode_change(payload))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptLogError(f"{path}: record at byte {offset} is unreadable ({exc})") from exc
        offset = end
    if offset < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
    return changes


class Engine:
    """One version's index, searchable by many threads, with durable realtime changes."""

    def __init__(
        self,
        index: EngineIndex,
        base_dir: Path,
        state_dir: Path,
        generation: int,
        log_records: int,
        config: StoreConfig,
        lock_file: Any | None,
    ):
        self.index = index
        self.base_dir = base_dir
        self.state_dir = state_dir
        self.generation = generation
        self.log_records = log_records
        self.config = config
        self._lock_file = lock_file
        self._rw = ReadWriteLock()
        self._writer = threading.Lock()
        self._log = open(self._log_path(generation), "ab") if lock_file is not None else None  # noqa: SIM115

    # ----- opening
    @classmethod
    def open(
        cls, base_dir: Path, state_dir: Path, config: StoreConfig | None = None, writable: bool = True
    ) -> Engine:
        """Load the newest generation and replay its log. Read-only opens never touch the state folder."""
        config = config or engine_defaults().store
        lock_file = None
        if writable:
            state_dir.mkdir(parents=True, exist_ok=True)
            lock_file = open(state_dir / "LOCK", "a")  # noqa: SIM115 (held for the engine's lifetime)
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                lock_file.close()
                raise EngineLockedError(f"{state_dir}: another process is writing this engine state") from exc
        try:
            for attempt in range(2):
                generation = _current_generation(state_dir)
                folder = base_dir if generation == 0 else state_dir / "snapshots" / str(generation)
                try:
                    index = EngineIndex.load(folder)
                    break
                except FileNotFoundError:
                    if writable or attempt:  # a reader raced a compaction: read CURRENT again
                        raise
            changes = read_log(state_dir / f"wal-{generation}.log", repair=writable)
            index.apply(changes)
            engine = cls(index, base_dir, state_dir, generation, len(changes), config, lock_file)
        except BaseException:
            if lock_file is not None:
                lock_file.close()
            raise
        if writable:
            engine._remove_stale_files()
        return engine

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @property
    def writable(self) -> bool:
        return self._log is not None

    def _log_path(self, generation: int) -> Path:
        return self.state_dir / f"wal-{generation}.log"

    # ----- queries
    def search(
        self,
        root: Node,
        vectors: Mapping[str, np.ndarray],
        *,
        limit: int | None = None,
        order: str = "score",
        deadline: float | None = None,
        costs: PlannerCosts | None = None,
        query_text: str | None = None,
        bm25: BM25Params | None = None,
    ) -> Hits:
        with self._rw.read():
            return execute(
                self.index,
                root,
                vectors,
                limit=limit,
                order=order,
                deadline=deadline,
                costs=costs,
                query_text=query_text,
                bm25=bm25,
            )

    def document(self, doc_id: int) -> dict[str, Any] | None:
        """A live document's terms, their payloads (terms that carry one) and embedding keys, or None."""
        with self._rw.read():
            internal = self.index.internal_id(doc_id)
            if internal is None:
                return None
            return {
                "doc_id": doc_id,
                "terms": self.index.document_terms(internal),
                "payloads": self.index.document_payloads(internal),
                "keys": self.index.document_keys(internal),
            }

    # ----- changes
    def add(self, doc_id: int, terms: TermsInput, embeddings: Mapping[str, Sequence[float]]) -> None:
        self.apply([{"op": "add", "doc_id": doc_id, "terms": terms, "embeddings": embeddings}])

    def update(
        self,
        doc_id: int,
        terms: TermsInput | None = None,
        embeddings: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.apply([{"op": "update", "doc_id": doc_id, "terms": terms, "embeddings": embeddings or {}}])

    def delete(self, doc_id: int) -> None:
        self.apply([{"op": "delete", "doc_id": doc_id}])

    def apply(self, requests: Sequence[Mapping[str, Any]]) -> int:
        """Validate a batch of changes, log them with one fsync, apply them; all or none are accepted.

        Each request is {"op": "add"|"update"|"delete", "doc_id", "terms", "embeddings"} (terms: strings and
        [term, payload] pairs, or a mapping term -> payload); raises UpdateError
        (status 400/404/409) naming the first bad request. Returns the number of changes applied.
        """
        if not self.writable:
            raise ReadOnlyEngineError(
                "this engine is open read-only: the process holding its write lock takes changes"
            )
        with self._writer:
            changes = self._validate(requests)
            if not changes:
                return 0
            assert self._log is not None
            self._log.write(b"".join(encode_change(c) for c in changes))
            self._log.flush()
            if self.config.fsync:
                os.fsync(self._log.fileno())
            with self._rw.write():
                self.index.apply(changes)
            self.log_records += len(changes)
            if 0 < self.config.compact_after_records <= self.log_records:
                self._compact_locked()
        return len(changes)

    def _validate(self, requests: Sequence[Mapping[str, Any]]) -> list[Change]:
        exists: dict[int, bool] = {}
        changes: list[Change] = []
        limit = self.config.max_terms_per_doc
        for n, request in enumerate(requests):
            try:
                if not isinstance(request, Mapping):
                    raise UpdateError("a change must be an object with op and doc_id")
                op = request.get("op")
                doc_id = check_doc_id(request.get("doc_id"))
                embeddings = request.get("embeddings") or {}
                if not isinstance(embeddings, Mapping):
                    raise UpdateError(f"doc_id {doc_id}: embeddings must be an object {{key: [floats]}}")
                present = exists.get(doc_id, self.index.internal_id(doc_id) is not None)
                if op == "add":
                    change: Change = self.index.check_document(
                        doc_id, request.get("terms") or [], embeddings, limit
                    )
                    if present:
                        raise DocumentExistsError(f"doc_id {doc_id} already exists (use an update)")
                elif op == "update":
                    if not present:
                        raise DocumentNotFoundError(f"doc_id {doc_id} does not exist")
                    doc = self.index.check_document(doc_id, request.get("terms") or [], embeddings, limit)
                    replaced = request.get("terms") is not None
                    change = Update(doc.doc_id, doc.terms if replaced else None, doc.embeddings, doc.payloads)
                elif op == "delete":
                    if not present:
                        raise DocumentNotFoundError(f"doc_id {doc_id} does not exist")
                    change = Delete(doc_id)
                else:
                    raise UpdateError(f"op must be add, update or delete, got {op!r}")
            except UpdateError as exc:
                if len(requests) > 1:
                    raise type(exc)(f"change {n}: {exc}") from exc
                raise
            exists[change.doc_id] = not isinstance(change, Delete)
            changes.append(change)
        return changes

    # ----- compaction
    def compact(self) -> int:
        """Fold the log into a new snapshot generation; returns the new generation."""
        if not self.writable:
            raise ReadOnlyEngineError(
                "this engine is open read-only: the process holding its write lock takes changes"
            )
        with self._writer:
            return self._compact_locked()

    def _compact_locked(self) -> int:
        with self._rw.read():
            fresh = self.index.compacted()
        generation = self.generation + 1
        snapshots = self.state_dir / "snapshots"
        snapshots.mkdir(exist_ok=True)
        tmp = snapshots / f".tmp-{generation}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        fresh.save(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, snapshots / str(generation))
        fsync_dir(snapshots)
        new_log = open(self._log_path(generation), "ab")  # noqa: SIM115
        os.fsync(new_log.fileno())
        fsync_dir(self.state_dir)
        atomic_write_text(self.state_dir / "CURRENT", json.dumps({"generation": generation}))
        with self._rw.write():
            old_log, self._log = self._log, new_log
            self.index, self.generation, self.log_records = fresh, generation, 0
        if old_log is not None:
            old_log.close()
        self._remove_stale_files()
        return generation

    def _remove_stale_files(self) -> None:
        """Logs and snapshots of other generations (left by a crash or a finished compaction)."""
        for path in self.state_dir.glob("wal-*.log"):
            if path.name != f"wal-{self.generation}.log":
                path.unlink(missing_ok=True)
        snapshots = self.state_dir / "snapshots"
        if snapshots.is_dir():
            for path in snapshots.iterdir():
                if path.name != str(self.generation):
                    shutil.rmtree(path, ignore_errors=True)


def _current_generation(state_dir: Path) -> int:
    current = state_dir / "CURRENT"
    if not current.is_file():
        return 0
    try:
        return int(json.loads(current.read_text())["generation"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptLogError(f"{current}: unreadable ({exc})") from exc
