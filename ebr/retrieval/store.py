"""Durable realtime updates: a write-ahead log over an immutable base index, compacted into snapshots.

The state of the engine for one published version lives beside it, never inside the immutable version folder:

    $EBR_HOME/engine/<version>/
        CURRENT          {"generation": g}; absent means g = 0: the version's own engine/ folder
        snapshots/<g>/   compacted index of generation g >= 1 (same format as engine/)
        wal-<g>.log      every change acknowledged since snapshot g, in order
        LOCK             flock-ed by the process writing (for its lifetime, or per write when shared)
        ACKED            the acknowledged end of the log: generation, byte size, CRC32 (rewritten in place)

A change is validated, appended to the log and fsync-ed, then applied in memory, and only then acknowledged,
so it is visible to the next query and survives a crash. An append that fails (disk full, EIO, a failed
fsync) is cut off again (ftruncate to the last good size) before the error is raised, so a refused change is
never applied, now or after a restart; if even the cut fails, the engine turns read-only with that reason.
Opening replays the log over the snapshot. A torn last record (a crash in the middle of an append, never
acknowledged) is dropped with a warning and cut off; a damaged record followed by more data is corruption and
stops the open with the file and offset. Replay never refuses a record: a repeated identical add (a client's
retry) is skipped, a differing add of a live document replaces it, an update or delete of a missing one is
skipped, each with a warning. Compaction writes generation g+1 under a temporary name, renames it, starts an
empty log, then renames CURRENT (the commit point): a failure or a crash at any point leaves a complete
generation, and the engine in memory moves to g+1 exactly when CURRENT does.

Every writer rewrites ACKED (no fsync: it is a signal, the log is the record) after a change is applied and
before it is acknowledged, and after a compaction's commit. An engine that does not hold the lock for its
lifetime (a read-only one, or any with `store.shared`) reads ACKED (one pread) before each search and, when
it is ahead, replays the log up to that end (or loads the newer generation) first: a change acknowledged by
any process is seen by every search that starts after the acknowledgement. Followers read only up to ACKED,
so they never see a record that is being appended, cut off again or torn. With `store.shared` several
processes write one state: a write takes the LOCK (waiting up to `store.lock_wait_s`, then 503), replays
what the others wrote (repairing a torn tail, as an open does), appends, applies, publishes ACKED and
releases it; a compaction does the same under the lock. After a failed cut the engine keeps the lock (no
other process writes that log) and turns read-only, as a lifetime writer does.

Log record: 4-byte little-endian payload length, 4-byte CRC32 of the payload, payload = UTF-8 JSON
{"op": "add"|"update"|"delete", "doc_id", "terms", "embeddings": {key: base64 float32 little-endian}}, plus
"rest": k on a record of a batch followed by k more (replay drops a last batch the log ends inside), plus
"payloads": {term: float32 value} when some of the terms carry one.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ebr.config import BM25Params, PlannerCosts, StoreConfig, engine_defaults
from ebr.io import fsync_dir, fsync_tree
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
from ebr.retrieval.executor import Hits, execute, match_mask
from ebr.retrieval.index import EngineIndex, return_freed_memory
from ebr.retrieval.query import Node

_HEADER = struct.Struct("<II")
_ACKED = struct.Struct("<qqI")  # generation, log size, CRC32 of the first 16 bytes
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC

log = logging.getLogger(__name__)


class CorruptLogError(RuntimeError):
    """A write-ahead log whose records cannot be trusted."""


class EngineLockedError(RuntimeError):
    """Another process holds the write lock of this engine state."""


class ReadOnlyEngineError(UpdateError):
    """A change sent to a read-only engine: opened so, another engine holds the lock, or its log failed."""

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
def encode_change(change: Change, rest: int = 0) -> bytes:
    """One log record; `rest`: how many records of the same batch follow it (0: the batch ends)."""
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
    if rest:
        record["rest"] = rest
    payload = json.dumps(record, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def encode_batch(changes: Sequence[Change]) -> bytes:
    """The records of one batch: replay applies all of them or, if the log ends inside it, none."""
    return b"".join(encode_change(c, len(changes) - 1 - i) for i, c in enumerate(changes))


def decode_change(payload: bytes) -> tuple[Change, int]:
    """A record's change and the number of records of its batch that follow it."""
    record = json.loads(payload)
    rest = int(record.get("rest", 0))
    if record["op"] == "delete":
        return Delete(int(record["doc_id"])), rest
    embeddings = {
        k: np.frombuffer(base64.b64decode(v), dtype="<f4").astype(np.float32)
        for k, v in record["embeddings"].items()
    }
    payloads = {str(t): float(v) for t, v in record.get("payloads", {}).items()}
    if record["op"] == "add":
        return Document(int(record["doc_id"]), list(record["terms"]), embeddings, payloads), rest
    return Update(int(record["doc_id"]), record["terms"], embeddings, payloads), rest


def read_log(path: Path, repair: bool) -> list[Change]:
    """The changes of a log; a torn last record, or a last batch the log ends inside (a crash during its
    append, never acknowledged), is dropped (and cut off the file when `repair`)."""
    return read_records(path, 0, repair)[0]


def read_records(path: Path, offset: int, repair: bool, end: int | None = None) -> tuple[list[Change], int]:
    """The changes of the complete batches of a log from byte `offset` (a batch boundary) to `end` (None:
    the end of the file) and the byte where they end; a torn last batch is dropped (cut off when
    `repair`). A missing log holds nothing."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if end is None else f.read(max(0, end - offset))
    except FileNotFoundError:
        if offset:
            raise  # a log read before is gone: a compaction removed it
        return [], 0
    changes: list[Change] = []
    at = 0
    good, good_changes = 0, 0  # the end of the last complete batch
    while at < len(data):
        if len(data) - at < _HEADER.size:
            break  # torn header
        length, crc = _HEADER.unpack_from(data, at)
        stop = at + _HEADER.size + length
        if stop > len(data):
            break  # torn payload
        payload = data[at + _HEADER.size : stop]
        if zlib.crc32(payload) != crc:
            if stop == len(data):
                break  # the last record, torn
            raise CorruptLogError(
                f"{path}: record at byte {offset + at} fails its checksum and is not the last"
            )
        try:
            change, rest = decode_change(payload)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptLogError(f"{path}: record at byte {offset + at} is unreadable ({exc})") from exc
        changes.append(change)
        at = stop
        if rest == 0:
            good, good_changes = at, len(changes)
    if good < len(data):
        dropped = len(changes) - good_changes
        log.warning(
            "%s: dropped a torn last batch (%d bytes at byte %d, %d whole records)",
            path,
            len(data) - good,
            offset + good,
            dropped,
        )
        if repair:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, offset + good)
                os.fsync(fd)
            finally:
                os.close(fd)
    return changes[:good_changes], offset + good


def write_acked(fd: int, generation: int, size: int) -> None:
    """Publish the acknowledged end of the log (in place, one pwrite)."""
    head = struct.pack("<qq", generation, size)
    os.pwrite(fd, _ACKED.pack(generation, size, zlib.crc32(head)), 0)


def read_acked(fd: int) -> tuple[int, int] | None:
    """The (generation, log size) an ACKED file publishes; None while it is empty or being rewritten."""
    data = os.pread(fd, _ACKED.size, 0)
    if len(data) != _ACKED.size:
        return None
    generation, size, crc = _ACKED.unpack(data)
    return (generation, size) if zlib.crc32(data[:16]) == crc else None


def replayable(index: EngineIndex, changes: Sequence[Change], path: Path) -> list[Change]:
    """The logged `changes` as they apply over `index`: a repeated identical add is skipped, a differing
    add of a live document replaces it, an update or delete of a missing one is skipped (with a warning)."""
    live: dict[int, bool] = {}
    added: dict[int, Document] = {}  # the logged content of documents whose last change is an add
    out: list[Change] = []
    for n, change in enumerate(changes):
        doc_id = change.doc_id
        present = live.get(doc_id, index.internal_id(doc_id) is not None)
        if isinstance(change, Document):
            if present:
                if _same_document(added.get(doc_id), change):
                    log.warning("%s: record %d repeats the add of doc_id %d; skipped", path, n, doc_id)
                    continue
                log.warning(
                    "%s: record %d adds doc_id %d, which exists; applied as a replacement", path, n, doc_id
                )
                out.append(Delete(doc_id))
            added[doc_id] = change
        elif not present:
            op = "deletes" if isinstance(change, Delete) else "updates"
            log.warning("%s: record %d %s doc_id %d, which does not exist; skipped", path, n, op, doc_id)
            continue
        else:
            added.pop(doc_id, None)
        live[doc_id] = not isinstance(change, Delete)
        out.append(change)
    return out


def _same_document(a: Document | None, b: Document) -> bool:
    return (
        a is not None
        and (a.doc_id, a.terms, a.payloads) == (b.doc_id, b.terms, b.payloads)
        and a.embeddings.keys() == b.embeddings.keys()
        and all(np.array_equal(a.embeddings[k], b.embeddings[k]) for k in a.embeddings)
    )


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
        read_only_reason: str | None = None,
        wants_lock: bool = False,
        log_size: int = 0,
    ):
        self.index = index
        self.base_dir = base_dir
        self.state_dir = state_dir
        self.generation = generation
        self.log_records = log_records
        self.config = config
        self.read_only_reason = read_only_reason  # None while writable
        self._lock_file = lock_file
        self._wants_lock = wants_lock  # read-only only because the lock was busy: take it when free
        self._rw = ReadWriteLock()
        self._writer = (
            threading.Lock()
        )  # one change or compaction at a time (held while waiting for the LOCK)
        self._state = threading.Lock()  # the state (index, generation, log size) changes under it
        self._fd: int | None = None  # the log, unbuffered: a failed append leaves no bytes behind
        self._log_size = log_size  # bytes of the log applied so far (a batch boundary)
        self.shared = config.shared and read_only_reason is None  # a writer that locks per write
        self._follows = self.shared or lock_file is None  # replays what other processes acknowledge
        self._acked_fd: int | None = None
        if lock_file is not None or self.shared:
            self._open_log()

    # ----- opening
    @classmethod
    def open(
        cls,
        base_dir: Path,
        state_dir: Path,
        config: StoreConfig | None = None,
        writable: bool = True,
        fall_back_read_only: bool = False,
    ) -> Engine:
        """Load the newest generation and replay its log. Read-only opens never touch the state folder. When
        the write lock is busy, raise EngineLockedError, or with `fall_back_read_only` open read-only and take
        the lock at the first write (or `take_write_lock`) after it is freed. With `config.shared` a writable
        open takes the lock only while it loads, and each change takes it again (see the module's text)."""
        config = config or engine_defaults().store
        if writable and config.shared:
            return cls._open_shared(base_dir, state_dir, config)
        lock_file = _try_lock(state_dir) if writable else None
        reason = None if lock_file is not None else "opened read-only"
        if writable and lock_file is None:
            if not fall_back_read_only:
                raise EngineLockedError(f"{state_dir}: another process is writing this engine state")
            reason = f"{state_dir / 'LOCK'} is held by another engine (another process or a retired one)"
        try:
            acked = None if lock_file is not None else _peek_acked(state_dir)  # a follower: acked only
            index, generation, records, size = _load(
                base_dir, state_dir, lock_file is not None, config.mmap, acked
            )
            wants_lock = writable and lock_file is None
            engine = cls(
                index, base_dir, state_dir, generation, records, config, lock_file, reason, wants_lock, size
            )
        except BaseException:
            if lock_file is not None:
                lock_file.close()
            raise
        if lock_file is not None:
            engine._publish()
            engine._remove_stale_files()
        return engine

    @classmethod
    def _open_shared(cls, base_dir: Path, state_dir: Path, config: StoreConfig) -> Engine:
        """A writer of a state several processes write: the lock is held only while it opens."""
        lock_file = _wait_lock(state_dir, config.lock_wait_s)
        if lock_file is None:
            raise EngineLockedError(
                f"{state_dir / 'LOCK'}: held for more than {config.lock_wait_s} s (engine.store.lock_wait_s):"
                " does a process not in shared mode (engine.store.shared) write this state?"
            )
        try:
            index, generation, records, size = _load(base_dir, state_dir, True, config.mmap)
            engine = cls(index, base_dir, state_dir, generation, records, config, None, log_size=size)
            engine._publish()
            engine._remove_stale_files()
        finally:
            lock_file.close()
        return engine

    def take_write_lock(self) -> bool:
        """Become the writer if this engine fell back to read-only and the lock is free now, replaying the
        changes written meanwhile first; returns whether the engine is writable."""
        with self._writer:
            return self._take_lock_locked()

    def _take_lock_locked(self) -> bool:
        if self._fd is not None or not self._wants_lock:
            return self._fd is not None
        lock_file = _try_lock(self.state_dir)
        if lock_file is None:
            return False
        try:
            with self._state:
                self._catch_up_writer()
            self._open_log()
        except BaseException:
            lock_file.close()
            raise
        self._lock_file, self._wants_lock, self.read_only_reason = lock_file, False, None
        self._follows = False
        log.info("%s: took the write lock", self.state_dir)
        self._publish()
        self._remove_stale_files()
        return True

    def _catch_up_writer(self) -> None:
        """Under the LOCK: replay what other engines wrote since this one's state (the whole log,
        a torn tail cut off), or load the newer generation."""
        generation = _current_generation(self.state_dir)
        if generation == self.generation:
            path = self._log_path(generation)
            changes, size = read_records(path, self._log_size, repair=True)
            if changes:
                with self._rw.write():
                    self.index.apply(replayable(self.index, changes, path))
            self._log_size, self.log_records = size, self.log_records + len(changes)
            return
        index, generation, records, size = _load(self.base_dir, self.state_dir, True, self.config.mmap)
        with self._rw.write():
            self.index, self.generation = index, generation
        return_freed_memory()  # the old generation's index
        self.log_records, self._log_size = records, size
        if self._fd is not None:  # the log of the old generation
            os.close(self._fd)
            self._open_log()

    # ----- following other processes
    def refresh(self) -> bool:
        """Replay the changes other processes acknowledged (ACKED) since this engine's state, or move to the
        generation they compacted into; a no-op (one pread) when there are none. Returns whether it did."""
        if not self._follows or not self._ahead(self._read_acked()):
            return False
        with self._state:
            acked = self._read_acked()
            if not self._ahead(acked):
                return False
            for attempt in range(3):
                try:
                    self._follow(acked)
                    return True
                except FileNotFoundError:  # a compaction removed those files meanwhile: follow it
                    acked = self._read_acked()
                    if attempt == 2 or not self._ahead(acked):
                        raise
        return False

    def _ahead(self, acked: tuple[int, int] | None) -> bool:
        return acked is not None and acked > (self.generation, self._log_size)

    def _follow(self, acked: tuple[int, int]) -> None:
        generation, size = acked
        if generation == self.generation:
            path = self._log_path(generation)
            changes, end = read_records(path, self._log_size, repair=False, end=size)
            if changes:
                with self._rw.write():
                    self.index.apply(replayable(self.index, changes, path))
            self._log_size, self.log_records = end, self.log_records + len(changes)
            return
        index, generation, records, end = _load(self.base_dir, self.state_dir, False, self.config.mmap, acked)
        with self._rw.write():
            self.index, self.generation = index, generation
        return_freed_memory()  # the old generation's index
        self.log_records, self._log_size = records, end
        if self._fd is not None:  # a shared writer appends to the new generation's log
            os.close(self._fd)
            self._open_log()

    def _read_acked(self) -> tuple[int, int] | None:
        if self._acked_fd is None:
            try:
                self._acked_fd = os.open(self.state_dir / "ACKED", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None  # no writer has published yet
        return read_acked(self._acked_fd)

    def _publish(self) -> None:
        """Write ACKED: this writer's generation and acknowledged log size. A failure is logged, not raised
        (the change is logged and applied): followers see it at the next publication."""
        try:
            fd = os.open(self.state_dir / "ACKED", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                write_acked(fd, self.generation, self._log_size)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning(
                "%s: cannot publish ACKED (%s); other processes see the change later", self.state_dir, exc
            )

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """A change's or compaction's turn: the state held (searches that must follow other processes wait;
        the others do not), and for a shared writer the LOCK held and the state caught up first."""
        if not self.shared:
            with self._state:
                yield
            return
        lock_file = _wait_lock(self.state_dir, self.config.lock_wait_s)  # searches go on meanwhile
        if lock_file is None:
            raise ReadOnlyEngineError(
                f"{self.state_dir / 'LOCK'}: busy for more than {self.config.lock_wait_s} s; try again"
            )
        try:
            with self._state:
                self._catch_up_writer()
                yield
        finally:
            if self._fd is None and self._lock_file is None and self.read_only_reason != "closed":
                self._lock_file = lock_file  # broken: keep the lock, no other engine writes this log
            else:
                lock_file.close()

    def close(self) -> None:
        """Close the log and release the write lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if self._acked_fd is not None:
            os.close(self._acked_fd)
            self._acked_fd = None
        self._wants_lock = self._follows = False
        self.read_only_reason = self.read_only_reason or "closed"

    @property
    def writable(self) -> bool:
        return self._fd is not None

    def _open_log(self) -> None:
        self._fd = os.open(self._log_path(self.generation), _LOG_FLAGS, 0o644)

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
        self.refresh()
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

    def matches(self, root: Node, doc_ids: np.ndarray) -> np.ndarray:
        """Which of `doc_ids` match `root` (executor.match_mask), under the read lock."""
        self.refresh()
        with self._rw.read():
            return match_mask(self.index, root, doc_ids)

    def document(self, doc_id: int) -> dict[str, Any] | None:
        """A live document's terms, their payloads (terms that carry one) and embedding keys, or None."""
        self.refresh()
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
        with self._writer:
            self._check_writable()
            with self._turn():
                return self._apply_locked(requests)

    def _apply_locked(self, requests: Sequence[Mapping[str, Any]]) -> int:
        changes = self._validate(requests)
        if not changes:
            return 0
        start = self._log_size
        self._append(encode_batch(changes))
        try:
            with self._rw.write():
                self.index.apply(changes)
        except BaseException as exc:
            self._cut_log(start, exc)
            self._break(f"{self.state_dir}: applying logged changes in memory failed ({exc!r}); reopen it")
            raise
        self.log_records += len(changes)
        self._publish()
        if 0 < self.config.compact_after_records <= self.log_records:
            try:
                self._compact_locked()
            except Exception as exc:  # the changes are logged and applied: acknowledge them anyway
                log.warning("%s: compaction failed (%s); retried after the next change", self.state_dir, exc)
        return len(changes)

    def _check_writable(self) -> None:
        if self._fd is None and not self._take_lock_locked():
            raise ReadOnlyEngineError(f"{self.state_dir}: this engine is read-only ({self.read_only_reason})")

    def _append(self, data: bytes) -> None:
        """Append records to the log and fsync them, or raise with the log cut back to its last good size."""
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.config.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._cut_log(self._log_size, exc)
            path = self._log_path(self.generation)
            raise OSError(exc.errno, f"{path}: append failed, nothing changed ({exc.strerror})") from exc
        self._log_size += len(data)

    def _cut_log(self, size: int, cause: BaseException) -> None:
        """Truncate the log back to `size` bytes; if that fails too, turn read-only and raise."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
            if self.config.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            path = self._log_path(self.generation)
            self._break(f"{path}: cutting a failed append back to {size} bytes failed ({exc}); reopen it")
            raise ReadOnlyEngineError(
                f"{self.read_only_reason}; the change may or may not be logged"
            ) from cause

    def _break(self, reason: str) -> None:
        """Stop taking changes (the lock stays held so that no other engine writes this log)."""
        log.error("%s", reason)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.read_only_reason = reason

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
        """Fold the log into a new snapshot generation; returns the new generation. On a failure before the
        commit (the rename of CURRENT) the engine and its files stay at the old generation."""
        with self._writer:
            self._check_writable()
            with self._turn():
                return self._compact_locked()

    def _compact_locked(self) -> int:
        if self.index.mapped:
            with self._rw.write():
                self.index.own_lists()  # faiss cannot clone mapped lists
        with self._rw.read():
            fresh = self.index.compacted()
        generation = self.generation + 1
        snapshots = self.state_dir / "snapshots"
        target, tmp = snapshots / str(generation), snapshots / f".tmp-{generation}"
        snapshots.mkdir(exist_ok=True)
        for leftover in (tmp, target):  # of an attempt that failed
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
        fresh.save(tmp)
        fsync_tree(tmp)
        os.replace(tmp, target)
        fsync_dir(snapshots)
        staged = self.state_dir / ".CURRENT.tmp"
        fd = os.open(self._log_path(generation), _LOG_FLAGS | os.O_TRUNC, 0o644)
        try:
            os.fsync(fd)
            fsync_dir(self.state_dir)
            with open(staged, "w") as f:
                f.write(json.dumps({"generation": generation}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(staged, self.state_dir / "CURRENT")  # the commit point
        except BaseException:
            os.close(fd)
            staged.unlink(missing_ok=True)
            raise
        if self.config.mmap:  # serve the new snapshot's files, shared with the other processes
            try:
                fresh = EngineIndex.load(target, mmap=True)
            except Exception as exc:  # committed: the copy in memory is the same index
                log.warning(
                    "%s: cannot map generation %d (%s); kept in memory", self.state_dir, generation, exc
                )
        with self._rw.write():
            old_fd, self._fd, self._log_size = self._fd, fd, 0
            self.index, self.generation, self.log_records = fresh, generation, 0
        if old_fd is not None:
            os.close(old_fd)
        self._publish()
        return_freed_memory()  # the old generation's index and the in-memory copy of the new one
        try:
            fsync_dir(self.state_dir)
        except OSError as exc:  # committed but perhaps not durable: keep the old generation's files
            log.warning("%s: generation %d is not synced to disk yet (%s)", self.state_dir, generation, exc)
            return generation
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


def _try_lock(state_dir: Path) -> Any | None:
    """The flock-ed LOCK file of a state folder, or None when another engine holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_file = open(state_dir / "LOCK", "a")  # noqa: SIM115 (held for the engine's lifetime)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    return lock_file


def _peek_acked(state_dir: Path) -> tuple[int, int] | None:
    try:
        fd = os.open(state_dir / "ACKED", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return read_acked(fd)
    finally:
        os.close(fd)


def _wait_lock(state_dir: Path, wait_s: float) -> Any | None:
    """The flock-ed LOCK file, waiting up to `wait_s` seconds for it, or None."""
    deadline = time.monotonic() + wait_s
    pause = 0.0005
    while True:
        lock_file = _try_lock(state_dir)
        if lock_file is not None or time.monotonic() >= deadline:
            return lock_file
        time.sleep(pause)
        pause = min(2 * pause, 0.01)


def _load(
    base_dir: Path, state_dir: Path, repair: bool, mmap: bool, acked: tuple[int, int] | None = None
) -> tuple[EngineIndex, int, int, int]:
    """The newest generation's index with its log replayed (up to `acked`'s size when it is of that
    generation), the generation, the number of log records and the log bytes replayed."""
    for attempt in range(3):
        generation = _current_generation(state_dir)
        folder = base_dir if generation == 0 else state_dir / "snapshots" / str(generation)
        try:
            index = EngineIndex.load(folder, mmap=mmap)
            break
        except FileNotFoundError:
            if repair or attempt == 2:  # a reader raced a compaction: read CURRENT again
                raise
    path = state_dir / f"wal-{generation}.log"
    end = None  # a writer (or a state no writer published yet): the whole log
    if acked is not None:  # a follower: only what is acknowledged. A generation committed but not published
        # yet has nothing acknowledged: its compaction publishes it before any append
        end = acked[1] if acked[0] == generation else 0
    changes, size = read_records(path, 0, repair=repair, end=end)
    index.apply(replayable(index, changes, path))
    return index, generation, len(changes), size


def _current_generation(state_dir: Path) -> int:
    current = state_dir / "CURRENT"
    if not current.is_file():
        return 0
    try:
        return int(json.loads(current.read_text())["generation"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptLogError(f"{current}: unreadable ({exc})") from exc
