"""Embedding ensembles (§6.2): weighted concatenation and cascades, on embeddings given as numpy arrays.

Weighted concatenation serves n models as one vector pair:
    E_Q = (a_1 V_Q,1/|V_Q,1|, ..., a_n V_Q,n/|V_Q,n|)      E_D = (U_D,1/|U_D,1|, ..., U_D,n/|U_D,n|)
so that E_Q . E_D = S_w = sum_i a_i cos(V_Q,i, U_D,i) and cos(E_Q, E_D) = S_w / (sqrt(sum a_i^2) sqrt(n)).
The document side does not depend on the weights: weights can be re-chosen without re-embedding documents.

A cascade retrieves the first model's top n, then re-ranks those n with the second model.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from ebr.ann.knn import as_float32, exact_knn, recall_at_k


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    x = as_float32(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _check(vectors: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> None:
    if not vectors:
        raise ValueError("an ensemble needs at least one model's vectors")
    if len({len(v) for v in vectors}) != 1:
        raise ValueError(f"models disagree on the number of rows: {[len(v) for v in vectors]}")
    if weights is not None:
        if len(weights) != len(vectors):
            raise ValueError(f"{len(weights)} weights for {len(vectors)} models")
        if any(a <= 0 for a in weights):
            raise ValueError(f"ensemble weights must be > 0, got {list(weights)}")


def weighted_concat_query(
    vectors: Sequence[np.ndarray], weights: Sequence[float], normalize: bool = False
) -> np.ndarray:
    """E_Q = concat_i(a_i V_Q,i / |V_Q,i|); with normalize=True divided by sqrt(sum a_i^2) (unit rows)."""
    _check(vectors, weights)
    out = np.concatenate([a * l2_normalize(v) for a, v in zip(weights, vectors, strict=True)], axis=1)
    if normalize:
        out /= np.sqrt(np.sum(np.square(weights)))
    return out.astype(np.float32)


def weighted_concat_docs(vectors: Sequence[np.ndarray], normalize: bool = False) -> np.ndarray:
    """E_D = concat_i(U_D,i / |U_D,i|); with normalize=True divided by sqrt(n) (unit rows)."""
    _check(vectors)
    out = np.concatenate([l2_normalize(v) for v in vectors], axis=1)
    if normalize:
        out /= np.sqrt(len(vectors))
    return out.astype(np.float32)


def weighted_similarity(
    query_vectors: Sequence[np.ndarray], doc_vectors: Sequence[np.ndarray], weights: Sequence[float]
) -> np.ndarray:
    """S_w(Q_j, D_j) = sum_i a_i cos(V_Q,i, U_D,i) for aligned rows j (the quantity the ensemble ranks by)."""
    _check(query_vectors, weights)
    return sum(
        a * np.sum(l2_normalize(q) * l2_normalize(d), axis=1)
        for a, q, d in zip(weights, query_vectors, doc_vectors, strict=True)
    )


@dataclass(frozen=True)
class WeightChoice:
    weights: tuple[float, ...]
    recall: float
    k: int
    table: list[dict]  # every grid point: {"weights": [...], "recall": float}


def choose_weights(
    queries: Sequence[np.ndarray],
    docs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    k: int,
    grid: Sequence[float],
) -> WeightChoice:
    """Grid search of the weights maximising exact-KNN recall@k on a validation split.

    The first weight is fixed to 1 (scaling all weights does not change the ranking); the others take every
    value of `grid`. Ties keep the first grid point. `targets` are row ids into the document matrices.
    """
    _check(queries)
    _check(docs)
    concat_docs = weighted_concat_docs(docs)
    table = []
    for rest in itertools.product(sorted(grid), repeat=len(queries) - 1):
        weights = (1.0, *map(float, rest))
        _, rows = exact_knn(weighted_concat_query(queries, weights), concat_docs, k)
        table.append({"weights": list(weights), "recall": recall_at_k(rows, targets, k)})
    best = max(table, key=lambda row: row["recall"])
    return WeightChoice(weights=tuple(best["weights"]), recall=best["recall"], k=k, table=table)


def cascade_search(
    first_queries: np.ndarray,
    first_docs: np.ndarray | None,
    second_queries: np.ndarray,
    second_docs: np.ndarray,
    n: int,
    k: int,
    first_index: faiss.Index | None = None,
    block_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """First model's top n (exact, or from `first_index`, e.g. a quantised one), re-ranked by the second.

    Returns (second-stage cosine similarities, document rows), best first, both (n_queries, k); rows are -1
    (score -inf) where the first stage returned fewer than k documents. Queries are processed in blocks;
    the second stage only gathers the n candidates' vectors.
    """
    if k > n:
        raise ValueError(f"cascade k={k} is larger than the first stage's n={n}")
    if first_docs is None and first_index is None:
        raise ValueError("cascade_search needs the first stage's documents or index")
    second_queries = l2_normalize(second_queries)
    scores_out = np.full((len(first_queries), k), -np.inf, dtype=np.float32)
    rows_out = np.full((len(first_queries), k), -1, dtype=np.int64)
    for start in range(0, len(first_queries), block_size):
        q1 = as_float32(first_queries[start : start + block_size])
        if first_index is not None:
            _, candidates = first_index.search(q1, n)
        else:
            _, candidates = exact_knn(q1, first_docs, n)
        gathered = as_float32(second_docs[np.maximum(candidates, 0)])
        gathered /= np.maximum(np.linalg.norm(gathered, axis=2, keepdims=True), 1e-12)
        scores = np.einsum("qnd,qd->qn", gathered, second_queries[start : start + block_size])
        scores[candidates < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        block_scores = np.take_along_axis(scores, order, axis=1)
        block_rows = np.take_along_axis(candidates, order, axis=1)
        block_rows[np.isneginf(block_scores)] = -1
        scores_out[start : start + len(q1)] = block_scores
        rows_out[start : start + len(q1)] = block_rows
    return scores_out, rows_out
