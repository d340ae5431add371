"""Deterministic sampling keys and id lookups for mining.

Every sampling decision is a seeded hash of ids (`sample_keys`), so a table mined twice with the same seed is
the same table whatever the block size or row order.
"""

from __future__ import annotations

import numpy as np

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


def index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
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


class PairSet:
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


def shard_rows(doc_ids: np.ndarray, fraction: float | None, seed: int) -> np.ndarray:
    """Row positions of one random shard holding `fraction` of the documents (all rows if None or 1)."""
    if fraction is None or fraction >= 1:
        return np.arange(len(doc_ids))
    if not 0 < fraction < 1:
        raise ValueError(f"mining.hard.shard must be in (0, 1] or null, got {fraction}")
    keys = sample_keys(seed, doc_ids, np.full(len(doc_ids), 0x5A4D))
    n = max(1, round(fraction * len(doc_ids)))
    return np.sort(np.argsort(keys, kind="stable")[:n])
