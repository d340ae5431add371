"""Offline hard negatives (paper §6.1): samples from a rank window of each query's ANN top-K.

The top-K is computed in blocks of queries: memory is bounded by `block_size x window end`, never by a
query x document matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import faiss
import numpy as np
import pandas as pd

from ebr.ann.knn import as_float32
from ebr.mining.keys import PairSet, index_of, sample_keys, shard_rows
from ebr.mining.negatives import ExcludedDocs, empty_negatives
from ebr.mining.stats import HardNegativeStats, rank_histogram
from ebr.runners import SERIAL, Shards

HardStrategy = Literal["uniform", "top"]


@dataclass(frozen=True)
class Embedded:
    """Row-aligned ids and float32 L2-normalised vectors (queries: a row per session; documents: per doc)."""

    ids: np.ndarray
    vectors: np.ndarray

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"{len(self.ids)} ids but {len(self.vectors)} vectors")


def neighbour_index(
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
    skip: PairSet  # (session row, document row) of the sessions' positives
    session_group: np.ndarray  # exclusion group of each session, -1 for none
    group_skip: PairSet | None  # (group, document row) pairs never to sample for the group's sessions
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
    qv = as_float32(st.query_vectors[st.query_rows[b]])
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
    q_rows = q_sorted[index_of(q_ids, sessions)]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    pos_docs = pos["doc_id"].to_numpy(np.int64)

    if shard is None or shard >= 1:  # no copy of the document vectors beyond the index's own
        shard_doc_ids = documents.ids.astype(np.int64)
        doc_vecs = as_float32(documents.vectors)
    else:
        shard_idx = shard_rows(documents.ids.astype(np.int64), shard, seed)
        shard_doc_ids = documents.ids[shard_idx].astype(np.int64)
        doc_vecs = as_float32(documents.vectors[shard_idx])
    lookup = _DocLookup(shard_doc_ids)
    session_of = np.repeat(np.arange(len(sessions)), counts)
    pos_rows = lookup.rows(pos_docs)
    skip = PairSet(session_of[pos_rows >= 0], pos_rows[pos_rows >= 0], len(shard_doc_ids))
    session_group = np.full(len(sessions), -1, np.int64)
    group_skip = None
    if excluded is not None:
        sg = excluded.session_groups[excluded.session_groups["session_id"].isin(sessions)]
        session_group[np.searchsorted(sessions, sg["session_id"].to_numpy(np.int64))] = sg["group"].to_numpy()
        g_rows = lookup.rows(excluded.group_docs["doc_id"].to_numpy(np.int64))
        groups = excluded.group_docs["group"].to_numpy(np.int64)
        group_skip = PairSet(groups[g_rows >= 0], g_rows[g_rows >= 0], len(shard_doc_ids))

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
    ann = neighbour_index(doc_vecs, index=index, nlist=nlist, nprobe=nprobe, seed=seed)
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
