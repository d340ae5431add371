"""Index selection (the paper's §4.3): which documents of a vertical enter the version's (nn) fields.

A vertical's predicate (conf/index_selection, `verticals.<name>`) is one SELECT over the dataset's DuckDB
tables returning a column `doc_id`: the vertical's documents that go into the embedding index. The others
stay in the term index (term matching finds them as before). It runs on a read-only connection with external
access disabled and the configuration locked, so a predicate reads the log tables and nothing else: no file
is read or written, no table changed. The rules, each broken one a one-line error naming the vertical:
exactly one SELECT statement; a `doc_id` column of integers without NULLs; every id a known document (one of
`doc_ids`) of that vertical; at least one document. An id of another vertical is an error, not ignored:
a predicate for people that returns groups is a mistake in the SQL, and ignoring it would hide that the
rule selects something else than written. Duplicates count once. A vertical without a predicate (absent or
null) keeps every document. Time in a predicate is the logs' time (e.g. `(SELECT max(ts) FROM sessions)`),
never the wall clock, so a rerun selects the same documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

SHOWN = 3  # offending ids named in an error


class IndexSelectionError(ValueError):
    """A predicate that cannot be used (the message names the vertical and the problem)."""


@dataclass(frozen=True)
class Selection:
    """The documents entering the (nn) fields: a mask over the rows of `doc_ids`, and per vertical its
    predicate and counts."""

    mask: np.ndarray  # bool per row of doc_ids
    predicates: dict[str, str | None]  # every vertical present; None: every document
    counts: dict[str, dict[str, int]]  # per vertical: documents, indexed

    def summary(self) -> dict[str, Any]:
        """The manifest's `index_selection` entry: per vertical its predicate and counts, and the totals."""
        return {
            "verticals": {
                v: {"predicate": self.predicates[v], **self.counts[v]} for v in sorted(self.counts)
            },
            "documents": int(len(self.mask)),
            "indexed": int(self.mask.sum()),
        }


def read_only(db_path: Path) -> duckdb.DuckDBPyConnection:
    """A connection to the DuckDB file that can read its tables and nothing else."""
    if not Path(db_path).is_file():
        raise IndexSelectionError(f"index_selection: no DuckDB file at {db_path}")
    return duckdb.connect(
        str(db_path), read_only=True, config={"enable_external_access": False, "lock_configuration": True}
    )


def predicate_ids(con: duckdb.DuckDBPyConnection, vertical: str, sql: str) -> np.ndarray:
    """The distinct doc ids (sorted int64) one vertical's predicate returns, or IndexSelectionError."""
    where = f"index_selection.verticals.{vertical}"
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise IndexSelectionError(f"{where}: {_first_line(exc)}") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = [s.type.name for s in statements] or ["none"]
        raise IndexSelectionError(f"{where}: must be exactly one SELECT statement, got {', '.join(kinds)}")
    query = statements[0].query.strip().rstrip(";")
    try:
        rel = con.sql(query)
        if "doc_id" not in rel.columns:
            raise IndexSelectionError(
                f"{where}: returns no doc_id column (columns: {', '.join(rel.columns)})"
            )
        kind = str(rel.types[rel.columns.index("doc_id")])
        if kind not in {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"}:
            raise IndexSelectionError(f"{where}: doc_id is {kind}, not an integer")
        column = con.sql(f"SELECT CAST(doc_id AS BIGINT) AS doc_id FROM (\n{query}\n) AS _selection")
        values = column.fetchnumpy()["doc_id"]
    except duckdb.Error as exc:
        raise IndexSelectionError(f"{where}: {_first_line(exc)}") from exc
    if np.ma.is_masked(values):
        raise IndexSelectionError(f"{where}: doc_id has NULL values")
    return np.unique(np.asarray(values, dtype=np.int64))


def select_documents(
    db_path: Path, doc_ids: np.ndarray, doc_verticals: Sequence[str], predicates: Mapping[str, str | None]
) -> Selection:
    """Evaluate every vertical's predicate against the DuckDB file: the mask over `doc_ids` (whose vertical
    is `doc_verticals`, row by row) of the documents entering the (nn) fields (module docstring)."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    verticals = np.asarray(doc_verticals, dtype=object)
    if len(verticals) != len(doc_ids):
        raise ValueError(f"{len(doc_ids)} doc ids but {len(verticals)} verticals")
    present = sorted(set(verticals.tolist()))
    unknown = sorted(set(predicates) - set(present))
    if unknown:
        raise IndexSelectionError(
            f"index_selection.verticals.{unknown[0]}: no such vertical (the documents': {', '.join(present)})"
        )
    mask = np.ones(len(doc_ids), dtype=bool)
    active = {v: sql for v, sql in predicates.items() if sql is not None}
    if active:
        order = np.argsort(doc_ids, kind="stable")
        with read_only(db_path) as con:
            for vertical, sql in sorted(active.items()):
                rows = _rows(predicate_ids(con, vertical, str(sql)), doc_ids, order, vertical)
                wrong = rows[verticals[rows] != vertical]
                if len(wrong):
                    named = ", ".join(f"{doc_ids[r]} ({verticals[r]})" for r in wrong[:SHOWN])
                    raise IndexSelectionError(
                        f"index_selection.verticals.{vertical}: returns {len(wrong)} documents of other "
                        f"verticals, e.g. {named}"
                    )
                if not len(rows):
                    raise IndexSelectionError(
                        f"index_selection.verticals.{vertical}: selects no document; the vertical's (nn) "
                        "part would find nothing (use no predicate, or a query policy that skips the nn part)"
                    )
                ours = verticals == vertical
                mask[ours] = False
                mask[rows] = True
    counts = {
        v: {"documents": int((verticals == v).sum()), "indexed": int(mask[verticals == v].sum())}
        for v in present
    }
    return Selection(mask, {v: predicates.get(v) for v in present}, counts)


def _rows(ids: np.ndarray, doc_ids: np.ndarray, order: np.ndarray, vertical: str) -> np.ndarray:
    """The rows of `ids` in `doc_ids` (sorted by `order`); an id that is no document is an error."""
    place = np.searchsorted(doc_ids, ids, sorter=order)
    place = np.minimum(place, len(order) - 1)
    rows = order[place] if len(order) else np.empty(0, np.int64)
    missing = ids[doc_ids[rows] != ids] if len(order) else ids
    if len(missing):
        named = ", ".join(str(i) for i in missing[:SHOWN])
        raise IndexSelectionError(
            f"index_selection.verticals.{vertical}: returns {len(missing)} doc_ids that are no document, "
            f"e.g. {named}"
        )
    return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
