"""Deterministic synthetic embeddings with exact relevance, for tests and benchmarks (faiss contrib style).

Documents sit in clusters of Zipf-distributed sizes (unbalanced, like real embeddings: the reason to tune
ANN against documents scanned rather than nprobe); each query is a noisy copy of one document, its target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticSet:
    docs: np.ndarray  # (n_docs, d) float32, unit rows
    queries: np.ndarray  # (n_queries, d) float32, unit rows
    targets: list[np.ndarray]  # row ids of each query's relevant documents


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_dataset(
    n_docs: int,
    n_queries: int,
    d: int,
    n_clusters: int = 100,
    spread: float = 0.6,
    query_noise: float = 0.5,
    skew: float = 1.0,
    seed: int = 0,
) -> SyntheticSet:
    """Documents in `n_clusters` Zipf(`skew`)-sized clusters; queries = target document + Gaussian noise.

    `spread` and `query_noise` are norms of the noise relative to the unit centre / document.
    """
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((n_clusters, d)))
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** skew
    cluster = rng.choice(n_clusters, size=n_docs, p=sizes / sizes.sum())
    docs = unit_rows(centres[cluster] + spread * rng.standard_normal((n_docs, d)) / np.sqrt(d))
    target = rng.choice(n_docs, size=n_queries, replace=n_queries > n_docs)
    queries = unit_rows(docs[target] + query_noise * rng.standard_normal((n_queries, d)) / np.sqrt(d))
    return SyntheticSet(docs=docs, queries=queries, targets=[np.array([t]) for t in target])
