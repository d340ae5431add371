"""Statistics of an offline hard-negative pass: counts, rank histogram, mean scores, timing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
