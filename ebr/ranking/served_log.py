"""The served-results log: the EBR results of each sampled search (`ebr serve`, `ebr feedback --replay`), as
append-only JSONL segments under the dataset's `served/`, and their loading into DuckDB's `served_results`.

Writing (`ServedLog.record`) costs the request only its sampling (a sha256) and a queue put: a background
thread computes each search's line (the EBR mask of its hits, `ebr_results`, against the live documents
then, the search's version kept open until it is done) and writes the lines in batches (`flush_records`, at
least every `flush_s`) to `served/<started>-<pid>-<token>-<n>.jsonl.part`, renamed `.jsonl` once
`segment_records` searches are in it or the log closes. A full queue drops the search (counted), a failed
line or write is logged once and counted; neither fails the search. A `.part` segment of a process that
died is closed (renamed) by the next log opened on the folder: its torn last line, if any, is quarantined
at loading.

One line per search with at least one EBR result (docs/log_schema.md, "Served EBR results"):
    {"ts", "version", "vertical", "expr", "query", "searcher_id", "context": {city, region, country,
     language}, "returned", "hits": [{"doc_id", "rank", "score"}]}     (rank: 1-based in the response)

Loading (`load_served`) reads every closed segment not loaded before (table `served_segments`): each line
becomes its hits' rows of `served_results` (request_id `<segment>:<line>`) or one `quarantine` row with its
reason, so that every line is accounted for (lines = requests + quarantined).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd

from ebr import home
from ebr.config import ServedLogConfig
from ebr.ranking.ebr_results import ebr_results
from ebr.retrieval.query import parse_cached
from ebr.retrieval.stages import Retrieved

if TYPE_CHECKING:
    from ebr.retrieval.service import SearchRequest, SearchResponse, SearchService

log = logging.getLogger(__name__)

SERVED_DIR = "served"
OPEN_SUFFIX = ".jsonl.part"
CLOSED_SUFFIX = ".jsonl"
CONTEXT_KEYS = ("city", "region", "country", "language")
TABLE = "served_results"
RESULTS_DDL = f"""CREATE TABLE IF NOT EXISTS main.{TABLE} (
    request_id VARCHAR, segment VARCHAR, line BIGINT, ts TIMESTAMP, version VARCHAR, vertical VARCHAR,
    expr VARCHAR, query VARCHAR, searcher_id BIGINT, city VARCHAR, region VARCHAR, country VARCHAR,
    language VARCHAR, returned INTEGER, doc_id BIGINT, rank INTEGER, score DOUBLE)"""
SEGMENTS_DDL = """CREATE TABLE IF NOT EXISTS main.served_segments (
    segment VARCHAR PRIMARY KEY, lines BIGINT, requests BIGINT, hits BIGINT, quarantined BIGINT,
    loaded_at TIMESTAMP)"""
# the columns of the dataset's quarantine table (ebr/ingestion/stage.py), which bad lines and label rows join
QUARANTINE_DDL = """CREATE TABLE IF NOT EXISTS main.quarantine (
    run_id VARCHAR, table_name VARCHAR, source_file VARCHAR, source_row BIGINT,
    expectation VARCHAR, reason VARCHAR, row_json VARCHAR)"""
_STOP = object()


def served_dir(dataset: str) -> Path:
    """Where the served-results segments of a dataset go."""
    return home.dataset_dir(dataset) / SERVED_DIR


def check_config(config: ServedLogConfig) -> None:
    """ValueError naming the bad engine.serving.log_results setting."""
    if not 0 <= config.sample_rate <= 1:
        raise ValueError(
            f"engine.serving.log_results.sample_rate must be in [0, 1], got {config.sample_rate}"
        )
    for name in ("segment_records", "flush_records", "queue_records"):
        if getattr(config, name) < 1:
            raise ValueError(
                f"engine.serving.log_results.{name} must be positive, got {getattr(config, name)}"
            )
    if not config.flush_s > 0:
        raise ValueError(f"engine.serving.log_results.flush_s must be positive, got {config.flush_s}")


def sampled(key: str, rate: float) -> bool:
    """Whether a search of this key is logged: the first 8 bytes of its sha256 as a share, below `rate`."""
    if rate >= 1:
        return True
    share = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return share < rate


def served_record(
    service: SearchService, request: SearchRequest, response: SearchResponse, now: datetime | None = None
) -> dict[str, Any] | None:
    """The log line of one answered search (None: it returned no EBR result)."""
    hits = response.hits
    if len(hits.doc_ids) == 0:
        return None
    root = parse_cached(response.expr, service.config.limits)
    mask = ebr_results(service, Retrieved(request, root, hits, {}))
    if not mask.any():
        return None
    ranks = np.flatnonzero(mask)
    return {
        "ts": (now or datetime.now(UTC)).isoformat(),
        "version": service.version,
        "vertical": request.vertical or (service.default_vertical if request.expr is None else None),
        "expr": response.expr,
        "query": request.query_text,
        "searcher_id": request.searcher_id,
        "context": {k: (request.context or {}).get(k) for k in CONTEXT_KEYS},
        "returned": len(hits.doc_ids),
        "hits": [
            {
                "doc_id": int(hits.doc_ids[i]),
                "rank": int(i) + 1,
                "score": None if math.isnan(float(hits.scores[i])) else float(hits.scores[i]),
            }
            for i in ranks.tolist()
        ],
    }


class ServedLog:
    """The buffered, append-only writer of one process's served results into `folder`."""

    def __init__(self, config: ServedLogConfig, folder: Path):
        check_config(config)
        self.config = config
        self.folder = folder
        self.logged = 0  # searches handed to the writer (a search without EBR results writes no line)
        self.written = 0  # lines written
        self.dropped = 0  # searches not logged: the queue was full, or the write failed
        self._seq = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.queue_records)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed = False
        self._prefix = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{secrets.token_hex(3)}"
        self._segment: Path | None = None
        self._segments = 0
        self._in_segment = 0
        self._file: Any = None

    @classmethod
    def for_dataset(cls, config: ServedLogConfig, dataset: str | None) -> ServedLog:
        """The log of `dataset`'s served results (None: no dataset, a log that records nothing)."""
        if dataset is None:
            return cls(dataclasses.replace(config, enabled=False), Path())
        return cls(config, served_dir(dataset))

    def record(self, service: SearchService, request: SearchRequest, response: SearchResponse) -> None:
        """Log a search's EBR results if it is sampled; never raises (a failure is logged once)."""
        if not self.config.enabled:
            return
        try:
            with self._lock:
                self._seq += 1
                key = f"{self._seq}:{request.vertical}:{request.query_text}"
            if not sampled(key, self.config.sample_rate) or len(response.hits.doc_ids) == 0:
                return
            self._start()
            service.acquire()  # the writer computes the line: the version stays open until it is done
            try:
                self._queue.put_nowait((service, request, response, datetime.now(UTC)))
            except BaseException:
                service.release()
                raise
            with self._lock:
                self.logged += 1
        except queue.Full:
            with self._lock:
                self.dropped += 1
        except Exception as exc:  # the search is answered whatever happens here
            with self._lock:
                self.dropped += 1
            self._fail_once(f"cannot log a served search: {exc}")

    def flush(self) -> None:
        """Wait until every search recorded so far is written (the segment stays open)."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        """Write what is queued, close (rename) the open segment and stop the writer."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                close_stale_segments(self.folder)
                self._thread = threading.Thread(target=self._write_loop, name="ebr-served-log", daemon=True)
                self._thread.start()

    def _write_loop(self) -> None:
        pending: list[dict[str, Any]] = []
        while True:
            try:
                item = self._queue.get(timeout=self.config.flush_s)
            except queue.Empty:
                self._write(pending)
                continue
            if item is _STOP or isinstance(item, threading.Event):
                self._write(pending)
                if item is _STOP:
                    self._close_segment()
                    return
                item.set()
                continue
            line = self._line(*item)
            if line is not None:
                pending.append(line)
            if len(pending) >= self.config.flush_records:
                self._write(pending)

    def _line(
        self, service: SearchService, request: SearchRequest, response: SearchResponse, now: datetime
    ) -> dict[str, Any] | None:
        """The line of a queued search (None: no EBR result, or it failed: counted, logged once)."""
        try:
            return served_record(service, request, response, now)
        except Exception as exc:
            with self._lock:
                self.dropped += 1
            self._fail_once(f"cannot log a served search: {exc}")
            return None
        finally:
            service.release()

    def _write(self, pending: list[dict[str, Any]]) -> None:
        try:
            while pending:
                if self._file is None:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self._segments += 1
                    self._segment = self.folder / f"{self._prefix}-{self._segments:05d}{OPEN_SUFFIX}"
                    self._file = self._segment.open("a", encoding="utf-8")
                    self._in_segment = 0
                room = self.config.segment_records - self._in_segment
                batch, pending[:] = pending[:room], pending[room:]
                self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in batch))
                self._file.flush()
                self._in_segment += len(batch)
                self.written += len(batch)
                if self._in_segment >= self.config.segment_records:
                    self._close_segment()
        except OSError as exc:
            self.dropped += len(pending)
            pending.clear()
            self._fail_once(f"cannot write the served-results log in {self.folder}: {exc}")

    def _close_segment(self) -> None:
        if self._file is None or self._segment is None:
            return
        try:
            self._file.close()
            self._segment.rename(self._segment.with_name(self._segment.name.removesuffix(".part")))
        except OSError as exc:
            self._fail_once(f"cannot close the served-results segment {self._segment}: {exc}")
        self._file, self._segment = None, None

    def _fail_once(self, message: str) -> None:
        if not self._failed:
            self._failed = True
            log.error("%s (logged once; searches are still answered)", message)


def close_stale_segments(folder: Path) -> list[Path]:
    """Rename to `.jsonl` the open segments of processes no longer alive; returns the segments closed."""
    closed = []
    for path in sorted(folder.glob(f"*{OPEN_SUFFIX}")):
        parts = path.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        target = path.with_name(path.name.removesuffix(".part"))
        with contextlib.suppress(FileNotFoundError):
            path.rename(target)
            closed.append(target)
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----- loading into DuckDB


@dataclass
class LoadReport:
    segments: int = 0
    lines: int = 0
    requests: int = 0
    hits: int = 0
    quarantined: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


class BadLine(ValueError):
    """A line of a segment that is not a valid served record."""


def parse_line(text: str) -> dict[str, Any]:
    """A segment line as a checked record; BadLine with the reason."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"not JSON (a torn or corrupt line): {exc}") from None
    if not isinstance(record, dict):
        raise BadLine("not a JSON object")
    try:
        ts = datetime.fromisoformat(_field(record, "ts", str))
    except ValueError as exc:
        raise BadLine(f"ts: not an ISO time ({exc})") from None
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    for name in ("version", "expr"):
        _field(record, name, str)
    for name in ("vertical", "query"):
        _field(record, name, str, optional=True)
    searcher = _field(record, "searcher_id", int, optional=True)
    context = record.get("context") or {}
    if not isinstance(context, dict) or any(
        not (v is None or isinstance(v, str)) for v in (context.get(k) for k in CONTEXT_KEYS)
    ):
        raise BadLine("context: expected an object of strings or nulls")
    returned = _field(record, "returned", int)
    hits = record.get("hits")
    if not isinstance(hits, list) or not hits:
        raise BadLine("hits: expected a non-empty list")
    rows = []
    for i, hit in enumerate(hits):
        if not isinstance(hit, dict):
            raise BadLine(f"hits[{i}]: not an object")
        doc_id = _field(hit, "doc_id", int, where=f"hits[{i}].")
        rank = _field(hit, "rank", int, where=f"hits[{i}].")
        score = hit.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise BadLine(f"hits[{i}].score: expected a number or null")
        if not 1 <= rank <= returned:
            raise BadLine(f"hits[{i}].rank: {rank} is not within 1..returned ({returned})")
        rows.append((doc_id, rank, None if score is None else float(score)))
    return record | {"ts": ts, "searcher_id": searcher, "context": context, "rows": rows}


def _field(record: Mapping[str, Any], name: str, kind: type, optional: bool = False, where: str = "") -> Any:
    value = record.get(name)
    if value is None and optional:
        return None
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise BadLine(f"{where}{name}: expected {'an integer' if kind is int else 'a string'}, got {value!r}")
    return value


def load_served(db_path: Path, folder: Path, run_id: str) -> LoadReport:
    """Load every closed segment of `folder` not loaded before into `served_results` (bad lines into
    `quarantine` with their reason), one transaction per segment; returns the counts."""
    report = LoadReport()
    segments = sorted(folder.glob(f"*{CLOSED_SUFFIX}")) if folder.is_dir() else []
    with duckdb.connect(str(db_path)) as con:
        for ddl in (RESULTS_DDL, SEGMENTS_DDL, QUARANTINE_DDL):
            con.execute(ddl)
        done = {r[0] for r in con.execute("SELECT segment FROM served_segments").fetchall()}
        for path in segments:
            if path.name in done:
                continue
            _load_segment(con, path, run_id, report)
    return report


def _load_segment(con: duckdb.DuckDBPyConnection, path: Path, run_id: str, report: LoadReport) -> None:
    rows: list[tuple[Any, ...]] = []
    bad: list[tuple[Any, ...]] = []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    for number, text in enumerate(lines, start=1):
        try:
            record = parse_line(text)
        except BadLine as exc:
            bad.append((run_id, TABLE, str(path), number, "served_log_line", str(exc), text[:10000]))
            continue
        request_id = f"{path.name.removesuffix(CLOSED_SUFFIX)}:{number}"
        context = record["context"]
        head = (
            request_id,
            path.name,
            number,
            record["ts"],
            record["version"],
            record["vertical"],
            record["expr"],
            record["query"],
            record["searcher_id"],
            *(context.get(k) for k in CONTEXT_KEYS),
            record["returned"],
        )
        rows += [(*head, *hit) for hit in record["rows"]]
    requests = len(lines) - len(bad)
    columns = [
        "request_id", "segment", "line", "ts", "version", "vertical", "expr", "query", "searcher_id",
        *CONTEXT_KEYS, "returned", "doc_id", "rank", "score",
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns).astype({"searcher_id": "Int64"})
    con.execute("BEGIN")
    try:
        if len(frame):
            con.register("_served_rows", frame)
            con.execute(f"INSERT INTO main.{TABLE} SELECT {', '.join(columns)} FROM _served_rows")
            con.unregister("_served_rows")
        if bad:
            con.executemany("INSERT INTO main.quarantine VALUES (?, ?, ?, ?, ?, ?, ?)", bad)
        con.execute(
            "INSERT INTO main.served_segments VALUES (?, ?, ?, ?, ?, ?)",
            [path.name, len(lines), requests, len(rows), len(bad), datetime.now(UTC).replace(tzinfo=None)],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.segments += 1
    report.lines += len(lines)
    report.requests += requests
    report.hits += len(rows)
    report.quarantined += len(bad)


def served_counts(db_path: Path) -> dict[str, Sequence[Mapping[str, Any]]]:
    """Per vertical: served requests and EBR results loaded so far."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute(
            f"SELECT coalesce(vertical, '(expression)') AS vertical, count(DISTINCT request_id) AS requests, "
            f"count(*) AS ebr_results FROM main.{TABLE} GROUP BY 1 ORDER BY 1"
        ).df()
    return {"verticals": rows.to_dict("records")}
