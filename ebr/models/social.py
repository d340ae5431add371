"""Social embeddings of users, learned from the friendship graph alone (FastRP, Chen et al. 2019: a sparse
random projection propagated over the normalised adjacency with scipy.sparse; seeded, linear in the number of
edges), plus k-means social clusters and their aggregation over a document's members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ebr.models.fields import Bags

if TYPE_CHECKING:
    import scipy.sparse as sp  # imported where used: serving looks up users (lookup_rows) without scipy


@dataclass(frozen=True)
class SocialGraph:
    user_ids: np.ndarray  # int64, sorted: row order of every per-user array
    adjacency: sp.csr_matrix  # symmetric 0/1, n_users x n_users

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user id, -1 for unknown ones."""
        return lookup_rows(self.user_ids, user_ids)


@dataclass(frozen=True)
class SocialEmbedding:
    vectors: np.ndarray  # float32 n_users x dim, L2-normalised rows
    clusters: np.ndarray  # int64 cluster of each user
    n_clusters: int


def lookup_rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in `sorted_ids`, -1 where absent."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)


def build_graph(user_ids: np.ndarray, edges: np.ndarray) -> SocialGraph:
    """Undirected graph over `user_ids` from (user_id, friend_id) rows; edges to unknown users are dropped."""
    import scipy.sparse as sp

    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    a, b = lookup_rows(ids, edges[:, 0]), lookup_rows(ids, edges[:, 1])
    keep = (a >= 0) & (b >= 0) & (a != b)
    a, b = a[keep], b[keep]
    n = len(ids)
    adj = sp.coo_matrix((np.ones(2 * len(a), np.float32), (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # duplicates summed by tocsr
    return SocialGraph(ids, adj)


def fastrp(
    graph: SocialGraph, dim: int, weights: Sequence[float], normalization_strength: float, seed: int
) -> np.ndarray:
    """FastRP embeddings: sum_k weights[k] * rownorm(S^k L R), S = D^-1 A, L = diag(degree)^strength.

    weights[0] weighs the user's own random vector R (order 0), weights[k] the k-hop propagation.
    """
    import scipy.sparse as sp

    n = len(graph.user_ids)
    rng = np.random.default_rng(seed)
    # very sparse random projection (Achlioptas, s=3): +-sqrt(3) with probability 1/6 each, else 0
    r = rng.choice(
        np.array([-np.sqrt(3.0), 0.0, np.sqrt(3.0)], np.float32), size=(n, dim), p=[1 / 6, 2 / 3, 1 / 6]
    )
    degree = np.asarray(graph.adjacency.sum(axis=1)).ravel()
    inv_degree = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    transition = sp.diags(inv_degree.astype(np.float32)) @ graph.adjacency
    scale = np.power(np.maximum(degree, 1.0), normalization_strength).astype(np.float32)[:, None]
    out = np.zeros((n, dim), np.float32)
    current = r * scale
    for order, weight in enumerate(weights):
        if order == 0:
            if weight:
                out += weight * _rownorm(r)
            continue
        current = transition @ current
        if weight:
            out += weight * _rownorm(current)
    return _rownorm(out)


def kmeans_clusters(vectors: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, int]:
    """Spherical k-means cluster of every row (faiss, seeded); n_clusters is capped by the number of rows."""
    k = max(1, min(n_clusters, len(vectors)))
    if k == 1:
        return np.zeros(len(vectors), np.int64), 1
    km = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=seed, spherical=True, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(vectors, dtype=np.float32))
    _, assign = km.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    return assign.ravel().astype(np.int64), k


def learn_social(graph: SocialGraph, cfg: dict) -> SocialEmbedding:
    """FastRP vectors and k-means clusters of every user in `graph`, as configured (conf/features: social)."""
    vectors = fastrp(
        graph, int(cfg["dim"]), list(cfg["weights"]), float(cfg["normalization_strength"]), int(cfg["seed"])
    )
    clusters, k = kmeans_clusters(vectors, int(cfg["clusters"]), int(cfg["seed"]))
    return SocialEmbedding(vectors, clusters, k)


def user_cluster_bags(graph: SocialGraph, clusters: np.ndarray, self_weight: float) -> Bags:
    """Per user: own cluster with `self_weight`, friends' clusters sharing the rest (a weighted multi-hot)."""
    n = len(graph.user_ids)
    coo = graph.adjacency.tocoo()
    degree = np.bincount(coo.row, minlength=n).astype(np.float32)
    has_friends = degree > 0
    own_w = np.where(has_friends, self_weight, 1.0).astype(np.float32)
    rows = np.r_[np.arange(n), coo.row]
    ids = np.r_[clusters, clusters[coo.col]]
    w = np.r_[own_w, (1.0 - self_weight) / np.maximum(degree[coo.row], 1.0)].astype(np.float32)
    return Bags.from_groups(n, rows, ids, w).merged()


def member_aggregates(
    vectors: np.ndarray, clusters: np.ndarray, owner_rows: np.ndarray, member_rows: np.ndarray, n_owners: int
) -> tuple[np.ndarray, Bags]:
    """Per owner (a group or event): the L2-normalised mean of its members' vectors and the distribution of
    their clusters (weights sum to 1). Owners without members get zeros and an empty bag."""
    import scipy.sparse as sp

    counts = np.bincount(owner_rows, minlength=n_owners).astype(np.float32)
    weights = (1.0 / counts[owner_rows]).astype(np.float32)
    mix = sp.csr_matrix((weights, (owner_rows, member_rows)), shape=(n_owners, len(vectors)))
    means = _rownorm(np.asarray(mix @ vectors, dtype=np.float32))
    bags = Bags.from_groups(n_owners, owner_rows, clusters[member_rows], weights).merged()
    return means, bags


def _rownorm(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
