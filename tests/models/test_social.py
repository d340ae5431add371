"""FastRP social embeddings and their aggregation over members."""

from __future__ import annotations

import numpy as np

from ebr.models.social import build_graph, fastrp, kmeans_clusters, member_aggregates, user_cluster_bags


def _two_communities() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.arange(100, 140)
    edges = [
        (ids[a], ids[b])
        for a in range(40)
        for b in range(a + 1, 40)
        if rng.random() < (0.5 if (a < 20) == (b < 20) else 0.01)
    ]
    return ids, np.array(edges)


def test_fastrp_is_seeded_and_separates_communities() -> None:
    ids, edges = _two_communities()
    graph = build_graph(ids, edges)
    a = fastrp(graph, 32, [1.0, 1.0, 1.0], -0.5, seed=3)
    assert np.array_equal(a, fastrp(graph, 32, [1.0, 1.0, 1.0], -0.5, seed=3))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    sim = a @ a.T
    same = np.equal.outer(np.arange(40) < 20, np.arange(40) < 20)
    assert sim[same & ~np.eye(40, dtype=bool)].mean() > sim[~same].mean() + 0.3
    clusters, k = kmeans_clusters(a, 2, seed=0)
    assert k == 2 and len(set(clusters[:20])) == 1 and set(clusters[:20]).isdisjoint(clusters[20:])


def test_graph_drops_unknown_and_self_edges() -> None:
    graph = build_graph(np.array([3, 1, 2]), np.array([[1, 2], [2, 1], [1, 1], [1, 99]]))
    assert graph.user_ids.tolist() == [1, 2, 3]
    assert graph.adjacency.toarray().tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert graph.rows(np.array([2, 99])).tolist() == [1, -1]


def test_cluster_bags_and_member_aggregates() -> None:
    graph = build_graph(np.array([1, 2, 3]), np.array([[1, 2], [1, 3]]))
    clusters = np.array([0, 1, 1])
    bags = user_cluster_bags(graph, clusters, self_weight=0.5)
    assert bags.rows()[0] == [(0, 0.5), (1, 0.5)]  # own cluster 0, both friends in cluster 1
    assert bags.rows()[1] == [(0, 0.5), (1, 0.5)]
    vectors = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    means, member_bags = member_aggregates(vectors, clusters, np.array([0, 0, 0]), np.array([0, 1, 2]), 2)
    np.testing.assert_allclose(means[0], np.array([1, 2]) / np.sqrt(5), rtol=1e-5)
    assert means[1].tolist() == [0, 0] and member_bags.rows()[1] == []
    assert [(c, round(w, 4)) for c, w in member_bags.rows()[0]] == [(0, 0.3333), (1, 0.6667)]
