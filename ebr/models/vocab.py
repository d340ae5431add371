"""Vocabularies of categorical features (city, region, country, language): value -> id, 0 = OOV."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

OOV = 0


def _key(value: object) -> str | None:
    pd = sys.modules.get("pandas")  # pd.NA exists only once pandas is imported: serving does not import it
    if value is None or (isinstance(value, float) and np.isnan(value)) or (pd is not None and value is pd.NA):
        return None
    text = str(value).strip().casefold()
    return text or None


@dataclass(frozen=True)
class Vocab:
    """Known values in a fixed order; id = position + 1. Missing and unseen values map to OOV (0)."""

    values: tuple[str, ...]

    @classmethod
    def build(cls, columns: Iterable[Iterable[object]], min_count: int = 1) -> Vocab:
        """Values seen at least `min_count` times over all `columns`, most frequent first (ties by value)."""
        counts: Counter[str] = Counter()
        for column in columns:
            counts.update(k for k in map(_key, column) if k is not None)
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        return cls(tuple(kept))

    def __len__(self) -> int:
        """Number of ids, the OOV id included (the size of the embedding table)."""
        return len(self.values) + 1

    def lookup(self, values: Iterable[object]) -> np.ndarray:
        """int64 ids of `values`."""
        index = self._index
        return np.fromiter((index.get(_key(v), OOV) for v in values), dtype=np.int64)

    @cached_property
    def _index(self) -> dict[str | None, int]:
        return {v: i + 1 for i, v in enumerate(self.values)}

    def to_list(self) -> list[str]:
        return list(self.values)

    @classmethod
    def from_list(cls, values: list[str]) -> Vocab:
        return cls(tuple(values))
