"""Writing the log tables as Parquet, with exactly the columns and types of ebr/schema.py.

Timestamps are `timestamp[us]` without a time zone and hold UTC. Sessions, impressions and intents are
streamed: sessions are written in time order and get consecutive ids in that order (so ids grow with `ts`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ebr.schema import IMPRESSIONS, INTENTS, SESSIONS, VERTICALS, Table
from ebr.simulator.population import Geography, Users
from ebr.simulator.sessions import Batch

ARROW_TYPES = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "VARCHAR": pa.string(),
    "TIMESTAMP": pa.timestamp("us"),
}
ROWS_PER_WRITE = 2_000_000


def arrow_schema(table: Table) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.sql_type], nullable=c.nullable) for c in table.columns])


def _writer(path: Path, table: Table) -> pq.ParquetWriter:
    return pq.ParquetWriter(path, arrow_schema(table), compression="zstd")


def _column(values: np.ndarray, sql_type: str, null: np.ndarray | None = None) -> pa.Array:
    if sql_type == "TIMESTAMP":
        values = values.astype("datetime64[us]")
    return pa.array(values, type=ARROW_TYPES[sql_type], mask=null)


def write_table(
    path: Path, table: Table, columns: dict[str, np.ndarray], nulls: dict[str, np.ndarray]
) -> int:
    """Write whole columns (numpy arrays; `nulls` marks missing values) in slices; returns the row count."""
    n = len(next(iter(columns.values())))
    with _writer(path, table) as writer:
        for a in range(0, max(n, 1), ROWS_PER_WRITE):
            arrays = [
                _column(
                    columns[c.name][a : a + ROWS_PER_WRITE],
                    c.sql_type,
                    nulls[c.name][a : a + ROWS_PER_WRITE] if c.name in nulls else None,
                )
                for c in table.columns
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=arrow_schema(table)))
    return n


def take(b: Batch, rows: np.ndarray) -> Batch:
    """The sessions `rows` of a batch (in that order) with their impressions."""
    new_index = np.full(len(b), -1, dtype=np.int64)
    new_index[rows] = np.arange(len(rows))
    imp = np.flatnonzero(new_index[b.imp_session] >= 0)
    return Batch(
        temp=b.temp[rows],
        user=b.user[rows],
        ts=b.ts[rows],
        vertical=b.vertical[rows],
        city=b.city[rows],
        target=b.target[rows],
        kind=b.kind[rows],
        parent=b.parent[rows],
        query=b.query[rows],
        form=b.form[rows],
        target_doc=b.target_doc[rows],
        success=b.success[rows],
        imp_session=new_index[b.imp_session[imp]],
        imp_doc=b.imp_doc[imp],
        imp_position=b.imp_position[imp],
        imp_clicked=b.imp_clicked[imp],
    )


def concat(batches: list[Batch]) -> Batch:
    offsets = np.cumsum([0] + [len(b) for b in batches])
    cat = np.concatenate
    return Batch(
        temp=cat([b.temp for b in batches]),
        user=cat([b.user for b in batches]),
        ts=cat([b.ts for b in batches]),
        vertical=cat([b.vertical for b in batches]),
        city=cat([b.city for b in batches]),
        target=cat([b.target for b in batches]),
        kind=cat([b.kind for b in batches]),
        parent=cat([b.parent for b in batches]),
        query=cat([b.query for b in batches]),
        form=cat([b.form for b in batches]),
        target_doc=cat([b.target_doc for b in batches]),
        success=cat([b.success for b in batches]),
        imp_session=cat([b.imp_session + o for b, o in zip(batches, offsets, strict=False)]),
        imp_doc=cat([b.imp_doc for b in batches]),
        imp_position=cat([b.imp_position for b in batches]),
        imp_clicked=cat([b.imp_clicked for b in batches]),
    )


class SessionWriter:
    """Streams sessions, impressions and intents in time order, assigning session ids 1, 2, ... in that order.

    Reformulations come minutes after their parent and may fall past the next chunk's first session, so
    sessions later than `until` are held back and merged with the next chunk.
    """

    def __init__(self, out: Path, users: Users, geo: Geography, start: np.datetime64) -> None:
        (out / "ground_truth").mkdir(parents=True, exist_ok=True)
        self.sessions = _writer(out / "sessions.parquet", SESSIONS)
        self.impressions = _writer(out / "impressions.parquet", IMPRESSIONS)
        self.intents = _writer(out / "ground_truth" / "intents.parquet", INTENTS)
        self.users, self.geo, self.start = users, geo, start
        self.pending: Batch | None = None
        self.next_id = 1
        self.recent = (
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
        )  # (sorted temp ids, final ids)
        self.counts = {"sessions": 0, "impressions": 0, "clicks": 0}

    def add(self, batches: list[Batch], until: int | None) -> None:
        """Queue a chunk's sessions and write every queued one earlier than `until` (all when None)."""
        b = concat(([self.pending] if self.pending is not None else []) + batches)
        ready = np.ones(len(b), dtype=bool) if until is None else b.ts < until
        ready_rows = np.flatnonzero(ready)
        self._write(take(b, ready_rows[np.lexsort((b.temp[ready_rows], b.ts[ready_rows]))]))
        self.pending = take(b, np.flatnonzero(~ready))

    def _write(self, b: Batch) -> None:
        n = len(b)
        ids = self.next_id + np.arange(n, dtype=np.int64)
        self.next_id += n
        order = np.argsort(b.temp)
        temps = np.concatenate([self.recent[0], b.temp[order]])
        finals = np.concatenate([self.recent[1], ids[order]])
        by_temp = np.argsort(temps, kind="stable")
        temps, finals = temps[by_temp], finals[by_temp]
        has_parent = b.parent >= 0
        pos = np.minimum(np.searchsorted(temps, b.parent[has_parent]), len(temps) - 1)
        if not np.array_equal(temps[pos], b.parent[has_parent]):
            raise RuntimeError("a reformulation's parent session was not written before it (chunk too short)")
        parent = np.zeros(n, dtype=np.int64)
        parent[has_parent] = finals[pos]
        self.recent = (b.temp[order], ids[order])

        geo = self.geo
        region = geo.city_region[b.city]
        columns = {
            "session_id": ids,
            "user_id": b.user + 1,
            "ts": self.start + b.ts.astype("timedelta64[s]"),
            "vertical": np.array(VERTICALS, dtype=object)[b.vertical],
            "query": b.query,
            "city": geo.city_name[b.city],
            "region": geo.region_name[region],
            "country": geo.country_code[geo.region_country[region]],
            "language": self.users.language[b.user],
        }
        self.sessions.write_table(_arrow(SESSIONS, columns, {}))
        intents = {
            "session_id": ids,
            "target_doc_id": b.target_doc,
            "intent_kind": b.kind,
            "query_form": b.form,
            "reformulates_session_id": parent,
        }
        self.intents.write_table(_arrow(INTENTS, intents, {"reformulates_session_id": ~has_parent}))
        order = np.lexsort((b.imp_position, b.imp_session))
        impressions = {
            "session_id": ids[b.imp_session[order]],
            "doc_id": b.imp_doc[order],
            "position": b.imp_position[order],
            "clicked": b.imp_clicked[order],
        }
        self.impressions.write_table(_arrow(IMPRESSIONS, impressions, {}))
        self.counts["sessions"] += n
        self.counts["impressions"] += len(order)
        self.counts["clicks"] += int(b.imp_clicked.sum())

    def close(self) -> None:
        for w in (self.sessions, self.impressions, self.intents):
            w.close()


def _arrow(table: Table, columns: dict[str, np.ndarray], nulls: dict[str, np.ndarray]) -> pa.Table:
    arrays = [_column(columns[c.name], c.sql_type, nulls.get(c.name)) for c in table.columns]
    return pa.Table.from_arrays(arrays, schema=arrow_schema(table))
