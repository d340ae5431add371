"""Feature columns: one row per query or document. A column is a categorical id array (int64), a dense
matrix (float32), weighted bags of ids (`Bags`, compressed rows) fed to `nn.EmbeddingBag`, or texts (an object
array of str, for a pretrained encoder inside a tower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Fields = dict[str, "np.ndarray | Bags"]


@dataclass(frozen=True)
class Bags:
    """Weighted multi-hot rows, compressed: row r holds ids[indptr[r]:indptr[r+1]] with their weights."""

    indptr: np.ndarray  # int64, len n_rows + 1
    ids: np.ndarray  # int64
    weights: np.ndarray  # float32

    @classmethod
    def from_lengths(cls, lengths: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> Bags:
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return cls(indptr, ids.astype(np.int64, copy=False), weights.astype(np.float32, copy=False))

    @classmethod
    def from_groups(cls, n_rows: int, rows: np.ndarray, ids: np.ndarray, weights: np.ndarray) -> Bags:
        """Bags from (row, id, weight) triples in any order; rows without triples are empty."""
        order = np.argsort(rows, kind="stable")
        lengths = np.bincount(rows, minlength=n_rows).astype(np.int64)
        return cls.from_lengths(lengths, ids[order], weights[order])

    @classmethod
    def empty(cls, n_rows: int) -> Bags:
        return cls(np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def take(self, rows: np.ndarray) -> Bags:
        """The bags of `rows` (in that order, repeats allowed)."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        # positions: for each output row, starts[r] + 0..len-1
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        positions = np.arange(total, dtype=np.int64) + offsets
        return Bags.from_lengths(lengths, self.ids[positions], self.weights[positions])

    def merged(self) -> Bags:
        """The same bags with the weights of repeated ids within a row summed (same embedding, fewer ids)."""
        n = len(self)
        rows = np.repeat(np.arange(n), np.diff(self.indptr))
        if len(rows) == 0:
            return self
        width = int(self.ids.max()) + 1
        keys, inverse = np.unique(rows * width + self.ids, return_inverse=True)
        summed = np.bincount(inverse, weights=self.weights, minlength=len(keys)).astype(np.float32)
        return Bags.from_groups(n, keys // width, keys % width, summed)

    def rows(self) -> list[list[tuple[int, float]]]:
        """Python lists, for tests and debugging."""
        return [
            list(zip(self.ids[a:b].tolist(), self.weights[a:b].tolist(), strict=True))
            for a, b in zip(self.indptr[:-1], self.indptr[1:], strict=True)
        ]


def take(fields: Fields, rows: np.ndarray) -> Fields:
    """The given rows of every column."""
    return {name: col.take(rows) if isinstance(col, Bags) else col[rows] for name, col in fields.items()}


def n_rows(fields: Fields) -> int:
    return len(next(iter(fields.values())))


def to_tensors(fields: Fields) -> dict[str, object]:
    """Torch inputs: (ids, offsets, per-sample weights) per bag column, lists of str for text columns
    (object arrays), tensors for the others."""
    import torch  # the columns themselves are numpy: serving featurises queries without torch

    out: dict[str, object] = {}
    for name, col in fields.items():
        if isinstance(col, np.ndarray) and col.dtype == object:
            out[name] = [str(t) for t in col]
        elif isinstance(col, Bags):
            out[name] = (
                torch.from_numpy(col.ids),
                torch.from_numpy(col.indptr[:-1].copy()),
                torch.from_numpy(col.weights),
            )
        else:
            out[name] = torch.from_numpy(np.ascontiguousarray(col))
    return out
