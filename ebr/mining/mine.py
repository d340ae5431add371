"""Training-data mining (paper §2.4, §6.1): positives, random (easy) negatives, offline hard negatives from an
ANN rank window, easy:hard mixing and hard positives from failed sessions.

Plain functions over DuckDB and numpy. Every sampling decision is a deterministic hash of (seed, ids), so a
table mined twice with the same seed is the same table whatever the block size or row order. The ANN top-K is
computed in blocks of queries: memory is bounded by `block_size x window end`, never by a query x document
matrix. Mined tables are checked by ebr/contracts/mined.py and stored per run by ebr/mining/store.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import duckdb
import faiss
import numpy as np
import pandas as pd

from ebr.runners import SERIAL, Shards

PositiveStrategy = Literal["clicks", "impressions", "clicks+hard", "impressions+hard", "hard"]
POSITIVE_STRATEGIES: tuple[str, ...] = ("clicks", "impressions", "clicks+hard", "impressions+hard", "hard")
HardStrategy = Literal["uniform", "top"]

POSITIVE_COLUMNS = ["session_id", "doc_id", "vertical", "kind", "source_session_id"]
NEGATIVE_COLUMNS = ["session_id", "positive_doc_id", "doc_id", "kind", "rank", "score"]


# ---------------------------------------------------------------------------------------------------------
# Deterministic sampling keys


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, *columns: np.ndarray) -> np.ndarray:
    """A uniform uint64 key per row, a deterministic hash of the seed and the row's integer columns."""
    key = _splitmix64(np.array([seed], dtype=np.int64).view(np.uint64))
    for col in columns:
        key = _splitmix64(key ^ np.asarray(col, dtype=np.int64).view(np.uint64))
    return key


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of `ids` in `sorted_ids` (all must be present)."""
    if not len(sorted_ids):
        if len(ids):
            raise KeyError(f"ids not found: {np.asarray(ids)[:5].tolist()}")
        return np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    if len(ids) and not np.array_equal(sorted_ids[pos], ids):
        missing = np.asarray(ids)[sorted_ids[pos] != ids][:5]
        raise KeyError(f"ids not found: {missing.tolist()}")
    return pos


class _PairSet:
    """Membership of (row index, doc index) pairs, encoded as sorted int64 keys row * n_docs + doc."""

    def __init__(self, rows: np.ndarray, docs: np.ndarray, n_docs: int):
        self.n_docs = np.int64(max(n_docs, 1))
        self.keys = np.unique(np.asarray(rows, np.int64) * self.n_docs + np.asarray(docs, np.int64))

    def contains(self, rows: np.ndarray, docs: np.ndarray) -> np.ndarray:
        keys = np.asarray(rows, np.int64) * self.n_docs + np.asarray(docs, np.int64)
        if not len(self.keys):
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys


# ---------------------------------------------------------------------------------------------------------
# Positives


def _register_ids(con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray) -> None:
    con.register("_mine_train_ids", pd.DataFrame({"session_id": np.asarray(train_session_ids, np.int64)}))


def click_positives(con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray) -> pd.DataFrame:
    """One positive per clicked impression of a training session."""
    _register_ids(con, train_session_ids)
    return con.execute(
        """
        SELECT DISTINCT i.session_id, i.doc_id, s.vertical, 'click' AS kind,
               CAST(NULL AS BIGINT) AS source_session_id
        FROM impressions i JOIN sessions s USING (session_id) JOIN _mine_train_ids t USING (session_id)
        WHERE i.clicked
        ORDER BY i.session_id, i.doc_id
        """
    ).df()


def impression_positives(con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray) -> pd.DataFrame:
    """One positive per impression (clicked or not) of a training session (as good as clicks, paper §2.4)."""
    _register_ids(con, train_session_ids)
    return con.execute(
        """
        SELECT i.session_id, i.doc_id, s.vertical,
               CASE WHEN bool_or(i.clicked) THEN 'click' ELSE 'impression' END AS kind,
               CAST(NULL AS BIGINT) AS source_session_id
        FROM impressions i JOIN sessions s USING (session_id) JOIN _mine_train_ids t USING (session_id)
        GROUP BY i.session_id, i.doc_id, s.vertical
        ORDER BY i.session_id, i.doc_id
        """
    ).df()


def hard_positives(
    con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray, window_minutes: float
) -> pd.DataFrame:
    """Positives for failed sessions (paper §6.1).

    A failed session (no click) of a searcher is followed, within `window_minutes`, by a reformulated session
    (different normalised query text) of the same searcher and vertical with at least one click. The clicked
    documents of the first such session become positives of the failed session; `source_session_id` names
    the session they come from. Both sessions must be training sessions.
    """
    if window_minutes <= 0:
        raise ValueError(f"mining.hard_positive_window_minutes must be > 0, got {window_minutes}")
    _register_ids(con, train_session_ids)
    return con.execute(
        """
        WITH s AS (
            SELECT s.session_id, s.user_id, s.vertical, s.ts, lower(trim(s.query)) AS q,
                   coalesce(c.clicks, 0) > 0 AS clicked
            FROM sessions s JOIN _mine_train_ids t USING (session_id)
            LEFT JOIN (
                SELECT session_id, count(*) AS clicks FROM impressions WHERE clicked GROUP BY session_id
            ) c USING (session_id)
        ),
        follow AS (
            SELECT f.session_id, f.vertical, ok.session_id AS source_session_id
            FROM s f JOIN s ok
              ON ok.user_id = f.user_id AND ok.vertical = f.vertical AND ok.clicked AND ok.q <> f.q
             AND ok.ts > f.ts AND ok.ts <= f.ts + to_microseconds(CAST(? * 60e6 AS BIGINT))
            WHERE NOT f.clicked
            QUALIFY row_number() OVER (PARTITION BY f.session_id ORDER BY ok.ts, ok.session_id) = 1
        )
        SELECT DISTINCT f.session_id, i.doc_id, f.vertical, 'hard_positive' AS kind, f.source_session_id
        FROM follow f JOIN impressions i ON i.session_id = f.source_session_id AND i.clicked
        ORDER BY f.session_id, i.doc_id
        """,
        [float(window_minutes)],
    ).df()


def positives(
    con: duckdb.DuckDBPyConnection,
    train_session_ids: np.ndarray,
    strategy: PositiveStrategy,
    hard_positive_window_minutes: float = 30.0,
) -> pd.DataFrame:
    """The positives of `strategy` (clicks | impressions | clicks+hard | impressions+hard | hard).

    Columns: session_id, doc_id, vertical, kind (click | impression | hard_positive), source_session_id.
    """
    if strategy not in POSITIVE_STRATEGIES:
        raise ValueError(f"mining.positives must be one of {POSITIVE_STRATEGIES}, got {strategy!r}")
    base, _, extra = strategy.partition("+")
    parts = []
    if base == "clicks":
        parts.append(click_positives(con, train_session_ids))
    elif base == "impressions":
        parts.append(impression_positives(con, train_session_ids))
    if base == "hard" or extra == "hard":
        parts.append(hard_positives(con, train_session_ids, hard_positive_window_minutes))
    out = pd.concat(parts, ignore_index=True)
    # A failed session has no click, so hard positives never collide with clicks; impressions of a failed
    # session may coincide with a hard positive: keep the hard_positive row.
    out = out.sort_values(["session_id", "doc_id", "kind"], key=_kind_priority).drop_duplicates(
        ["session_id", "doc_id"], keep="first"
    )
    return out.reset_index(drop=True)[POSITIVE_COLUMNS].astype({"session_id": "int64", "doc_id": "int64"})


def _kind_priority(col: pd.Series) -> pd.Series:
    if col.name != "kind":
        return col
    return col.map({"hard_positive": 0, "click": 1, "impression": 2})


@dataclass(frozen=True)
class ExcludedDocs:
    """Documents never taken as hard negatives: every session of a group skips every document of its group.

    Grouped, the exclusions stay O(clicks); as (session, document) pairs they grow with the square of a
    query's popularity (649 million pairs on the `large` world; 1.1 million documents in 0.5 million
    groups)."""

    session_groups: pd.DataFrame  # session_id, group (int >= 0)
    group_docs: pd.DataFrame  # group, doc_id

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame) -> ExcludedDocs:
        """Explicit (session_id, doc_id) pairs: one group per session."""
        ids = pairs["session_id"].to_numpy(np.int64)
        sessions = np.unique(ids)
        return cls(
            pd.DataFrame({"session_id": sessions, "group": np.arange(len(sessions))}),
            pd.DataFrame(
                {"group": np.searchsorted(sessions, ids), "doc_id": pairs["doc_id"].to_numpy(np.int64)}
            ),
        )

    def pairs(self) -> pd.DataFrame:
        """The (session_id, doc_id) pairs, sorted (for small data: tests, inspection)."""
        merged = self.session_groups.merge(self.group_docs, on="group")[["session_id", "doc_id"]]
        return merged.sort_values(["session_id", "doc_id"], ignore_index=True)


def same_query_clicks(
    con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray, session_ids: np.ndarray
) -> ExcludedDocs:
    """Documents clicked, in any training session, for the same normalised query text and vertical as the
    session: likely false negatives, excluded from hard negatives on request. A group per (text, vertical)."""
    _register_ids(con, train_session_ids)
    group_docs = con.execute(
        """
        WITH clicked AS (
            SELECT DISTINCT lower(trim(s.query)) AS q, s.vertical, i.doc_id
            FROM impressions i JOIN sessions s USING (session_id) JOIN _mine_train_ids t USING (session_id)
            WHERE i.clicked
        )
        SELECT q, vertical, (dense_rank() OVER (ORDER BY q, vertical) - 1)::BIGINT AS "group", doc_id
        FROM clicked ORDER BY "group", doc_id
        """
    ).df()
    con.register("_mine_groups", group_docs[["q", "vertical", "group"]].drop_duplicates())
    con.register("_mine_query_ids", pd.DataFrame({"session_id": np.asarray(session_ids, np.int64)}))
    session_groups = con.execute(
        """
        SELECT s.session_id, g."group"
        FROM sessions s JOIN _mine_query_ids USING (session_id)
        JOIN _mine_groups g ON g.q = lower(trim(s.query)) AND g.vertical = s.vertical
        ORDER BY s.session_id
        """
    ).df()
    return ExcludedDocs(session_groups, group_docs[["group", "doc_id"]])


# ---------------------------------------------------------------------------------------------------------
# Random (easy) negatives


def random_negatives(
    positives: pd.DataFrame, documents: pd.DataFrame, per_positive: int, seed: int, max_tries: int = 64
) -> pd.DataFrame:
    """`per_positive` documents drawn uniformly (with replacement) from the pool of the positive's vertical,
    never a positive of the same session. `documents` has columns doc_id, vertical."""
    if per_positive < 0:
        raise ValueError(f"mining.random_per_positive must be >= 0, got {per_positive}")
    pos = positives[["session_id", "doc_id", "vertical"]].reset_index(drop=True)
    if per_positive == 0 or pos.empty:
        return empty_negatives()
    doc_ids = np.sort(documents["doc_id"].to_numpy(np.int64))
    _, session_idx = np.unique(pos["session_id"].to_numpy(np.int64), return_inverse=True)
    known = _PairSet(session_idx, _index_of(doc_ids, pos["doc_id"].to_numpy(np.int64)), len(doc_ids))

    out = []
    for vertical, group in pos.groupby("vertical", sort=True):
        pool = np.sort(documents.loc[documents["vertical"] == vertical, "doc_id"].to_numpy(np.int64))
        if len(pool) == 0:
            raise ValueError(f"no documents of vertical {vertical!r} to draw random negatives from")
        rows = np.repeat(group.index.to_numpy(), per_positive)
        slot = np.tile(np.arange(per_positive, dtype=np.int64), len(group))
        s_id = pos["session_id"].to_numpy(np.int64)[rows]
        p_id = pos["doc_id"].to_numpy(np.int64)[rows]
        chosen = np.empty(len(rows), dtype=np.int64)
        todo = np.arange(len(rows))
        for attempt in range(max_tries):
            keys = sample_keys(seed, s_id[todo], p_id[todo], slot[todo], np.full(len(todo), attempt))
            chosen[todo] = pool[(keys % np.uint64(len(pool))).astype(np.int64)]
            clash = known.contains(session_idx[rows[todo]], _index_of(doc_ids, chosen[todo]))
            todo = todo[clash]
            if not len(todo):
                break
        else:
            raise ValueError(
                f"could not draw random negatives for session {int(s_id[todo[0]])}: "
                f"its positives cover the {vertical!r} pool"
            )
        out.append(pd.DataFrame({"session_id": s_id, "positive_doc_id": p_id, "doc_id": chosen}))
    frame = pd.concat(out, ignore_index=True)
    frame["kind"] = "easy"
    frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int32")
    frame["score"] = np.float32("nan")
    return frame[NEGATIVE_COLUMNS]


def empty_negatives() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": pd.Series(dtype="int64"),
            "positive_doc_id": pd.Series(dtype="int64"),
            "doc_id": pd.Series(dtype="int64"),
            "kind": pd.Series(dtype="object"),
            "rank": pd.Series(dtype="Int32"),
            "score": pd.Series(dtype="float32"),
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Offline hard negatives


@dataclass(frozen=True)
class Embedded:
    """Row-aligned ids and float32 L2-normalised vectors (queries: a row per session; documents: per doc)."""

    ids: np.ndarray
    vectors: np.ndarray

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"{len(self.ids)} ids but {len(self.vectors)} vectors")


@dataclass
class HardNegativeStats:
    """End-of-run statistics, in the spirit of sentence-transformers' mine_hard_negatives."""

    queries: int = 0
    positives: int = 0
    negatives: int = 0
    wanted: int = 0
    short_positives: int = 0  # positives that got fewer than per_positive negatives
    excluded_in_window: int = 0  # window candidates dropped as known positives / likely false negatives
    window: tuple[int, int] = (0, 0)
    indexed_documents: int = 0
    rank_histogram: dict[str, int] = field(default_factory=dict)
    positive_score_mean: float = float("nan")
    negative_score_mean: float = float("nan")
    seconds: float = 0.0

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "positives": self.positives,
            "negatives": self.negatives,
            "wanted": self.wanted,
            "short_positives": self.short_positives,
            "excluded_in_window": self.excluded_in_window,
            "window": list(self.window),
            "indexed_documents": self.indexed_documents,
            "rank_histogram": self.rank_histogram,
            "positive_score_mean": _finite(self.positive_score_mean),
            "negative_score_mean": _finite(self.negative_score_mean),
            "seconds": round(self.seconds, 3),
            "queries_per_second": _finite(round(self.queries_per_second, 1)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HardNegativeStats:
        """The inverse of to_dict (a stored report back to statistics)."""
        nan = float("nan")
        return cls(
            **{k: d[k] for k in ("queries", "positives", "negatives", "wanted", "short_positives")},
            excluded_in_window=d["excluded_in_window"],
            window=tuple(d["window"]),
            indexed_documents=d["indexed_documents"],
            rank_histogram=dict(d["rank_histogram"]),
            positive_score_mean=nan if d["positive_score_mean"] is None else d["positive_score_mean"],
            negative_score_mean=nan if d["negative_score_mean"] is None else d["negative_score_mean"],
            seconds=d["seconds"],
        )

    def __add__(self, other: HardNegativeStats) -> HardNegativeStats:
        """Combine the statistics of two disjoint mining passes (e.g. two verticals)."""
        hist = dict(self.rank_histogram)
        for k, v in other.rank_histogram.items():
            hist[k] = hist.get(k, 0) + v
        return HardNegativeStats(
            queries=self.queries + other.queries,
            positives=self.positives + other.positives,
            negatives=self.negatives + other.negatives,
            wanted=self.wanted + other.wanted,
            short_positives=self.short_positives + other.short_positives,
            excluded_in_window=self.excluded_in_window + other.excluded_in_window,
            window=other.window if other.queries else self.window,
            indexed_documents=self.indexed_documents + other.indexed_documents,
            rank_histogram=hist,
            positive_score_mean=_weighted(
                self.positive_score_mean, self.positives, other.positive_score_mean, other.positives
            ),
            negative_score_mean=_weighted(
                self.negative_score_mean, self.negatives, other.negative_score_mean, other.negatives
            ),
            seconds=self.seconds + other.seconds,
        )

    def format(self) -> str:
        lo, hi = self.window
        lines = [
            f"Offline hard negatives, ranks {lo}-{hi} over {self.indexed_documents:,} indexed documents",
            f"{'queries':<28}{self.queries:>12,}",
            f"{'positives':<28}{self.positives:>12,}",
            f"{'negatives mined / wanted':<28}{self.negatives:>12,} / {self.wanted:,}",
            f"{'positives short of negatives':<28}{self.short_positives:>12,}",
            f"{'excluded in window':<28}{self.excluded_in_window:>12,}",
            f"{'mean cos: positive':<28}{self.positive_score_mean:>12.4f}",
            f"{'mean cos: hard negative':<28}{self.negative_score_mean:>12.4f}",
            f"{'time (s), queries/s':<28}{self.seconds:>12.2f}, {self.queries_per_second:,.0f}",
            "rank histogram: " + ", ".join(f"{k}: {v}" for k, v in self.rank_histogram.items()),
        ]
        return "\n".join(lines)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _weighted(a: float, na: int, b: float, nb: int) -> float:
    if na + nb == 0:
        return float("nan")
    return float((np.nan_to_num(a) * na + np.nan_to_num(b) * nb) / (na + nb))


def rank_histogram(ranks: np.ndarray, window: tuple[int, int], bins: int = 8) -> dict[str, int]:
    """Counts of mined ranks in `bins` equal-width buckets over the window, keyed 'lo-hi'."""
    lo, hi = window
    edges = np.unique(np.linspace(lo, hi + 1, min(bins, hi - lo + 1) + 1).round().astype(np.int64))
    counts, _ = np.histogram(ranks, bins=edges)
    return {f"{edges[i]}-{edges[i + 1] - 1}": int(c) for i, c in enumerate(counts)}


def build_index(
    doc_vectors: np.ndarray, index: str = "flat", nlist: int = 1024, nprobe: int = 16, seed: int = 0
) -> faiss.Index:
    """An inner-product faiss index over the documents: exact `flat`, or `ivf` (IVF-Flat, nprobe lists)."""
    dim = doc_vectors.shape[1]
    if index == "flat":
        idx = faiss.IndexFlatIP(dim)
    elif index == "ivf":
        nlist = max(1, min(nlist, len(doc_vectors) // 39))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = seed
        idx.train(doc_vectors)
        idx.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"mining.hard.index must be 'flat' or 'ivf', got {index!r}")
    idx.add(doc_vectors)
    return idx


def shard_rows(doc_ids: np.ndarray, fraction: float | None, seed: int) -> np.ndarray:
    """Row positions of one random shard holding `fraction` of the documents (all rows if None or 1)."""
    if fraction is None or fraction >= 1:
        return np.arange(len(doc_ids))
    if not 0 < fraction < 1:
        raise ValueError(f"mining.hard.shard must be in (0, 1] or null, got {fraction}")
    keys = sample_keys(seed, doc_ids, np.full(len(doc_ids), 0x5A4D))
    n = max(1, round(fraction * len(doc_ids)))
    return np.sort(np.argsort(keys, kind="stable")[:n])


class _DocLookup:
    """Row of a document id among the indexed documents."""

    def __init__(self, doc_ids: np.ndarray) -> None:
        self.order = np.argsort(doc_ids, kind="stable")
        self.sorted = doc_ids[self.order]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Indexed row of each id, or -1 for ids not indexed."""
        if not len(self.sorted):
            return np.full(len(ids), -1, np.int64)
        p = np.minimum(np.searchsorted(self.sorted, ids), len(self.sorted) - 1)
        return np.where(self.sorted[p] == ids, self.order[p], -1)


@dataclass
class _BlockState:
    """What every block of queries reads (shipped once per worker by the shard runner)."""

    sessions: np.ndarray  # sorted session ids with positives
    counts: np.ndarray  # positives per session
    offsets: np.ndarray  # session -> first positive in pos_docs
    query_vectors: np.ndarray  # the embedded queries
    query_rows: np.ndarray  # row of query_vectors of each session
    pos_docs: np.ndarray  # positives' doc ids, grouped by session, doc_id order
    doc_ids: np.ndarray  # indexed documents
    doc_vectors: np.ndarray
    lookup: _DocLookup
    skip: _PairSet  # (session row, document row) of the sessions' positives
    session_group: np.ndarray  # exclusion group of each session, -1 for none
    group_skip: _PairSet | None  # (group, document row) pairs never to sample for the group's sessions
    ann: faiss.Index
    window: tuple[int, int]  # ranks, 1-based inclusive; end clipped to the indexed documents
    per_positive: int
    strategy: str
    seed: int


@dataclass
class _Block:
    sessions: np.ndarray
    positives: np.ndarray
    docs: np.ndarray
    ranks: np.ndarray
    scores: np.ndarray
    positive_scores: np.ndarray
    excluded: int


def _mine_block(st: _BlockState, b: slice) -> _Block:
    """Hard negatives of the sessions `b`: one ANN top-K call, window cut, exclusions, sampling."""
    lo, k = st.window
    counts = st.counts[b]
    b_rows = np.arange(b.start, b.stop)
    qv = np.ascontiguousarray(st.query_vectors[st.query_rows[b]], dtype=np.float32)
    scores, cand = st.ann.search(qv, k)
    # positive scores, for the statistics
    pr = st.lookup.rows(st.pos_docs[st.offsets[b.start] : st.offsets[b.stop]])
    pv = np.where(pr[:, None] >= 0, st.doc_vectors[np.maximum(pr, 0)], np.nan)
    positive_scores = np.einsum("ij,ij->i", pv, np.repeat(qv, counts, axis=0))

    cand, scores = cand[:, lo - 1 :], scores[:, lo - 1 :]
    ranks = np.broadcast_to(np.arange(lo, lo + cand.shape[1], dtype=np.int64), cand.shape)
    missing = cand < 0
    skipped = st.skip.contains(np.repeat(b_rows, cand.shape[1]).reshape(cand.shape), cand)
    if st.group_skip is not None:
        groups = np.repeat(st.session_group[b], cand.shape[1]).reshape(cand.shape)
        skipped |= (groups >= 0) & st.group_skip.contains(np.maximum(groups, 0), cand)
    skipped &= ~missing
    valid = ~missing & ~skipped
    if st.strategy == "top":
        order_key = ranks.astype(np.uint64)
    else:
        order_key = sample_keys(
            st.seed, np.repeat(st.sessions[b], cand.shape[1]), st.doc_ids[np.maximum(cand, 0)].ravel()
        ).reshape(cand.shape)
    order_key = np.where(valid, order_key, np.iinfo(np.uint64).max)
    order = np.argsort(order_key, axis=1, kind="stable")
    need = counts * st.per_positive
    take = np.arange(cand.shape[1])[None, :] < np.minimum(need, valid.sum(axis=1))[:, None]
    r_local, slot = np.nonzero(take)
    col = order[r_local, slot]
    # slot j of a session goes to its positive j // per_positive (positives in doc_id order)
    return _Block(
        sessions=st.sessions[b][r_local],
        positives=st.pos_docs[st.offsets[b.start + r_local] + slot // st.per_positive],
        docs=st.doc_ids[cand[r_local, col]],
        ranks=ranks[r_local, col],
        scores=scores[r_local, col],
        positive_scores=positive_scores,
        excluded=int(skipped.sum()),
    )


def offline_hard_negatives(
    queries: Embedded,
    documents: Embedded,
    positives: pd.DataFrame,
    *,
    window: tuple[int, int] = (101, 500),
    per_positive: int = 1,
    strategy: HardStrategy = "uniform",
    shard: float | None = None,
    excluded: ExcludedDocs | None = None,
    block_size: int = 4096,
    index: str = "flat",
    nlist: int = 1024,
    nprobe: int = 16,
    seed: int = 0,
    progress: str = "hard negatives",
    shards: Shards = SERIAL,
) -> tuple[pd.DataFrame, HardNegativeStats]:
    """Hard negatives for each positive from the ranks `window` (1-based, inclusive) of the query's top-K.

    The query is the session (row of `queries`); K = window end. Candidates that are positives of the same
    session, or excluded for it by `excluded`, are skipped, keeping the others' ranks. `uniform`
    samples `per_positive` negatives per positive uniformly from the remaining window, `top` takes the
    best-ranked ones; a session's negatives are distinct. With `shard`, only one random shard holding that
    fraction of the documents is indexed (the paper found one shard enough). Top-K runs over blocks of
    `block_size` queries (mapped by `shards`, ebr/runners.py), reporting progress as `progress`.
    """
    lo, hi = int(window[0]), int(window[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"mining.hard.window must be [lo, hi] with 1 <= lo <= hi, got {list(window)}")
    if per_positive < 1:
        raise ValueError(f"mining.hard.per_positive must be >= 1, got {per_positive}")
    if strategy not in ("uniform", "top"):
        raise ValueError(f"mining.hard.strategy must be 'uniform' or 'top', got {strategy!r}")
    t0 = time.perf_counter()

    pos = positives[["session_id", "doc_id"]].drop_duplicates().sort_values(["session_id", "doc_id"])
    q_sorted = np.argsort(queries.ids, kind="stable")
    q_ids = queries.ids[q_sorted].astype(np.int64)
    sessions, counts = np.unique(pos["session_id"].to_numpy(np.int64), return_counts=True)
    q_rows = q_sorted[_index_of(q_ids, sessions)]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    pos_docs = pos["doc_id"].to_numpy(np.int64)

    if shard is None or shard >= 1:  # no copy of the document vectors beyond the index's own
        shard_doc_ids = documents.ids.astype(np.int64)
        doc_vecs = np.ascontiguousarray(documents.vectors, dtype=np.float32)
    else:
        shard_idx = shard_rows(documents.ids.astype(np.int64), shard, seed)
        shard_doc_ids = documents.ids[shard_idx].astype(np.int64)
        doc_vecs = np.ascontiguousarray(documents.vectors[shard_idx], dtype=np.float32)
    lookup = _DocLookup(shard_doc_ids)
    session_of = np.repeat(np.arange(len(sessions)), counts)
    pos_rows = lookup.rows(pos_docs)
    skip = _PairSet(session_of[pos_rows >= 0], pos_rows[pos_rows >= 0], len(shard_doc_ids))
    session_group = np.full(len(sessions), -1, np.int64)
    group_skip = None
    if excluded is not None:
        sg = excluded.session_groups[excluded.session_groups["session_id"].isin(sessions)]
        session_group[np.searchsorted(sessions, sg["session_id"].to_numpy(np.int64))] = sg["group"].to_numpy()
        g_rows = lookup.rows(excluded.group_docs["doc_id"].to_numpy(np.int64))
        groups = excluded.group_docs["group"].to_numpy(np.int64)
        group_skip = _PairSet(groups[g_rows >= 0], g_rows[g_rows >= 0], len(shard_doc_ids))

    stats = HardNegativeStats(
        queries=len(sessions),
        positives=len(pos),
        wanted=len(pos) * per_positive,
        window=(lo, hi),
        indexed_documents=len(shard_doc_ids),
    )
    if not len(sessions) or not len(shard_doc_ids):
        stats.seconds = time.perf_counter() - t0
        return empty_negatives(), stats
    ann = build_index(doc_vecs, index=index, nlist=nlist, nprobe=nprobe, seed=seed)
    state = _BlockState(
        sessions=sessions,
        counts=counts,
        offsets=offsets,
        query_vectors=queries.vectors,
        query_rows=q_rows,
        pos_docs=pos_docs,
        doc_ids=shard_doc_ids,
        doc_vectors=doc_vecs,
        lookup=lookup,
        skip=skip,
        session_group=session_group,
        group_skip=group_skip,
        ann=ann,
        window=(lo, min(hi, len(shard_doc_ids))),
        per_positive=per_positive,
        strategy=strategy,
        seed=seed,
    )
    blocks = shards.map(partial(_mine_block, state), shards.rows(len(sessions), block_size), progress)
    stats.excluded_in_window = sum(b.excluded for b in blocks)
    frame = pd.DataFrame(
        {
            "session_id": np.concatenate([b.sessions for b in blocks]),
            "positive_doc_id": np.concatenate([b.positives for b in blocks]),
            "doc_id": np.concatenate([b.docs for b in blocks]),
            "kind": "hard",
            "rank": pd.array(np.concatenate([b.ranks for b in blocks]), dtype="Int32"),
            "score": np.concatenate([b.scores for b in blocks]).astype(np.float32),
        }
    )
    pos_scores = [b.positive_scores for b in blocks]
    per_pos = frame.groupby(["session_id", "positive_doc_id"]).size()
    stats.negatives = len(frame)
    stats.short_positives = int(len(pos) - (per_pos >= per_positive).sum())
    stats.rank_histogram = rank_histogram(frame["rank"].to_numpy(np.int64), (lo, hi))
    stats.positive_score_mean = float(np.nanmean(np.concatenate(pos_scores))) if len(pos) else float("nan")
    stats.negative_score_mean = float(frame["score"].mean()) if len(frame) else float("nan")
    stats.seconds = time.perf_counter() - t0
    return frame, stats


# ---------------------------------------------------------------------------------------------------------
# Mixing


def mix(easy: pd.DataFrame, hard: pd.DataFrame, easy_hard_ratio: float, seed: int) -> pd.DataFrame:
    """Easy and hard negatives at `easy_hard_ratio` easy per hard one.

    Keeps n_hard = min(|hard|, floor(|easy| / ratio)) hard and n_easy = round(n_hard * ratio) easy negatives,
    each a seeded uniform subsample, so the realised ratio is exact when the ratio is an integer (and exact up
    to rounding otherwise). A ratio of 0 keeps the hard negatives only; `inf` keeps the easy ones only.
    """
    if not easy_hard_ratio >= 0:
        raise ValueError(f"mining.easy_hard_ratio must be >= 0, got {easy_hard_ratio}")
    if easy_hard_ratio == 0:
        return _subsample(hard, len(hard), seed)
    if math.isinf(easy_hard_ratio):
        return _subsample(easy, len(easy), seed)
    n_hard = min(len(hard), math.floor(len(easy) / easy_hard_ratio + 1e-9))
    n_easy = min(len(easy), round(n_hard * easy_hard_ratio))
    return pd.concat([_subsample(easy, n_easy, seed), _subsample(hard, n_hard, seed)], ignore_index=True)


def _subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` rows chosen by smallest seeded hash key of (session, positive, doc): order-independent."""
    if n >= len(frame):
        picked = frame
    else:
        keys = sample_keys(
            seed,
            frame["session_id"].to_numpy(np.int64),
            frame["positive_doc_id"].to_numpy(np.int64),
            frame["doc_id"].to_numpy(np.int64),
            (frame["kind"].to_numpy() == "hard").astype(np.int64),
        )
        picked = frame.iloc[np.sort(np.argsort(keys, kind="stable")[:n])]
    return picked.sort_values(["session_id", "positive_doc_id", "kind", "doc_id"], kind="stable").reset_index(
        drop=True
    )
