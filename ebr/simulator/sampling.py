"""Vectorised draws from items grouped by an integer key (users by city, groups by city and topic, ...)."""

from __future__ import annotations

import numpy as np


class Blocks:
    """Items sorted by an int64 key; draws pick an item whose key lies in [lo, hi), uniformly or by weight."""

    def __init__(self, key: np.ndarray, weight: np.ndarray | None = None) -> None:
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]
        self.cum = None if weight is None else np.concatenate([[0.0], np.cumsum(weight[self.order])])

    def draw_range(self, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per (lo, hi) key range; -1 where the range holds none."""
        a, b = np.searchsorted(self.keys, lo), np.searchsorted(self.keys, hi)
        r = rng.random(len(a))
        empty = b <= a
        if self.cum is None:
            pos = a + (r * (b - a)).astype(np.int64)
        else:
            base, total = self.cum[a], self.cum[b] - self.cum[a]
            pos = np.searchsorted(self.cum, base + r * total, side="right") - 1
        pos = np.clip(pos, a, np.maximum(a, b - 1))
        out = self.order[np.minimum(pos, len(self.order) - 1)] if len(self.order) else np.zeros_like(a)
        return np.where(empty, -1, out)

    def draw(self, key: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item with exactly this key per entry; -1 where there is none."""
        return self.draw_range(key, key + 1, rng)


def random_neighbour(
    ptr: np.ndarray, data: np.ndarray, rows: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A uniformly random entry of each row of a CSR structure; -1 for empty rows."""
    deg = ptr[rows + 1] - ptr[rows]
    pos = ptr[rows] + (rng.random(len(rows)) * deg).astype(np.int64)
    return np.where(deg > 0, data[np.minimum(pos, len(data) - 1)] if len(data) else -1, -1)


def csr_contains(ptr: np.ndarray, data: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether values[i] is in row rows[i] of a CSR structure with sorted rows (vectorised binary search)."""
    lo, hi = ptr[rows].copy(), ptr[rows + 1].copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        less = np.zeros(len(lo), dtype=bool)
        less[active] = data[mid[active]] < values[active]
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)
    inside = lo < ptr[rows + 1]
    found = np.zeros(len(rows), dtype=bool)
    found[inside] = data[lo[inside]] == values[inside]
    return found
