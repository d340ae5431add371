"""Exact nearest neighbours computed in blocks, and the recall measures used to compare retrievers.

Like faiss contrib's `knn_ground_truth`: the documents are scanned block by block and the top-k kept in a
heap, so no query x document matrix is ever built and the documents may be a memory-mapped array.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def as_float32(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 view or copy of `x`, the layout faiss needs."""
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_knn(
    queries: np.ndarray, docs: np.ndarray, k: int, block_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k documents by inner product: (scores, row ids), best first, -1 where fewer than k exist."""
    queries = as_float32(queries)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(docs), block_size):
        block = as_float32(docs[start : start + block_size])
        scores, rows = faiss.knn(queries, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(rows >= 0, rows + start, -1))
    heap.finalize()
    return heap.D, heap.I


def recall_at_k(retrieved: np.ndarray, targets: Sequence[np.ndarray], k: int) -> float:
    """Mean over queries of |top-k ∩ T| / |T| (the paper's recall@K); queries without targets are skipped."""
    if retrieved.shape[1] < k:
        raise ValueError(f"recall@{k} needs at least {k} results per query, got {retrieved.shape[1]}")
    if len(targets) != len(retrieved):
        raise ValueError(f"{len(retrieved)} result rows but {len(targets)} target sets")
    per_query = [
        np.isin(np.asarray(t), row[:k]).sum() / len(t)
        for row, t in zip(retrieved, targets, strict=True)
        if len(t)
    ]
    return float(np.mean(per_query)) if per_query else 0.0


def one_recall_at(retrieved: np.ndarray, nearest: np.ndarray, r: int = 10) -> float:
    """The paper's 1-recall@r: share of queries whose exact nearest neighbour is among the first r results."""
    return float((retrieved[:, :r] == np.asarray(nearest).reshape(-1, 1)).any(axis=1).mean())
