"""Weighted concatenation, weight choice, cascades and the exact-KNN helpers, on random vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebr.ann.knn import exact_knn, one_recall_at, recall_at_k
from ebr.models.ensembles import (
    cascade_search,
    choose_weights,
    weighted_concat_docs,
    weighted_concat_query,
    weighted_similarity,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=30, deadline=None)
@given(
    dims=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    weight_seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 6),
)
def test_weighted_concat_cosine_is_proportional_to_weighted_score(dims, weight_seed, rows):
    rng = np.random.default_rng(weight_seed)
    weights = rng.uniform(0.05, 5.0, size=len(dims))
    queries = [rng.standard_normal((rows, d)) * rng.uniform(0.1, 10) for d in dims]  # norms vary on purpose
    docs = [rng.standard_normal((rows, d)) * rng.uniform(0.1, 10) for d in dims]
    eq, ed = weighted_concat_query(queries, weights), weighted_concat_docs(docs)
    s_w = weighted_similarity(queries, docs, weights)
    inner = np.sum(eq * ed, axis=1)
    cosine = inner / (np.linalg.norm(eq, axis=1) * np.linalg.norm(ed, axis=1))
    np.testing.assert_allclose(inner, s_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        cosine, s_w / (np.sqrt(np.sum(weights**2)) * np.sqrt(len(dims))), rtol=1e-4, atol=1e-5
    )
    # the normalised variants are the same vectors scaled to unit rows: the inner product is that cosine
    eq_n, ed_n = (
        weighted_concat_query(queries, weights, normalize=True),
        weighted_concat_docs(docs, normalize=True),
    )
    np.testing.assert_allclose(np.linalg.norm(eq_n, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sum(eq_n * ed_n, axis=1), cosine, rtol=1e-4, atol=1e-5)


def test_weighted_concat_rejects_bad_input():
    a, b = np.ones((3, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match="weights must be > 0"):
        weighted_concat_query([a, a], [1.0, 0.0])
    with pytest.raises(ValueError, match="2 weights for 1 models"):
        weighted_concat_query([a], [1.0, 2.0])
    with pytest.raises(ValueError, match="number of rows"):
        weighted_concat_docs([a, b])


def _two_models(seed: int = 0, n_docs: int = 400, n_queries: int = 120):
    """Model A sees the signal with noise, model B is pure noise: the best ensemble down-weights B."""
    rng = np.random.default_rng(seed)
    latent = _unit(rng.standard_normal((n_docs, 16)))
    target = rng.choice(n_docs, size=n_queries)
    docs_a = latent
    queries_a = _unit(latent[target] + 0.35 * rng.standard_normal((n_queries, 16)))
    docs_b = _unit(rng.standard_normal((n_docs, 8)))
    queries_b = _unit(rng.standard_normal((n_queries, 8)))
    return [queries_a, queries_b], [docs_a, docs_b], [np.array([t]) for t in target]


def test_choose_weights_is_the_argmax_of_the_grid_and_downweights_noise():
    queries, docs, targets = _two_models()
    grid = [0.25, 1.0, 4.0]
    choice = choose_weights(queries, docs, targets, k=5, grid=grid)
    # brute force: full score matrices (tiny) for every grid point
    recalls = {}
    for w in grid:
        scores = queries[0] @ docs[0].T + w * (queries[1] @ docs[1].T)
        top = np.argsort(-scores, axis=1)[:, :5]
        recalls[w] = np.mean([t[0] in row for row, t in zip(top, targets, strict=True)])
    assert choice.weights == (1.0, 0.25)
    assert choice.recall == pytest.approx(max(recalls.values()))
    assert [row["recall"] for row in choice.table] == pytest.approx([recalls[w] for w in grid])


def _cascade_data(seed: int = 1):
    rng = np.random.default_rng(seed)
    return (
        _unit(rng.standard_normal((37, 8))).astype(np.float32),
        _unit(rng.standard_normal((500, 8))).astype(np.float32),
        _unit(rng.standard_normal((37, 12))).astype(np.float32),
        _unit(rng.standard_normal((500, 12))).astype(np.float32),
    )


def _brute_force_cascade(first_rows: np.ndarray, q2: np.ndarray, d2: np.ndarray, k: int) -> np.ndarray:
    out = []
    for q, cands in zip(q2, first_rows, strict=True):
        scores = d2[cands] @ q
        out.append(cands[np.argsort(-scores)[:k]])
    return np.array(out)


@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_cascade_equals_brute_force_reranking_of_first_stage_top_n(block_size):
    q1, d1, q2, d2 = _cascade_data()
    n, k = 40, 10
    first = np.argsort(-(q1 @ d1.T), axis=1)[:, :n]
    scores, rows = cascade_search(q1, d1, q2, d2, n=n, k=k, block_size=block_size)
    np.testing.assert_array_equal(rows, _brute_force_cascade(first, q2, d2, k))
    np.testing.assert_allclose(scores, np.take_along_axis(q2 @ d2.T, rows, axis=1), rtol=1e-5)


def test_cascade_with_a_quantised_first_stage_reranks_that_index_top_n():
    q1, d1, q2, d2 = _cascade_data(2)
    index = faiss.index_factory(8, "IVF8,PQ4x4", faiss.METRIC_INNER_PRODUCT)
    index.train(d1)
    index.add(d1)
    faiss.extract_index_ivf(index).nprobe = 2
    n, k = 30, 5
    _, first = index.search(q1, n)
    _, rows = cascade_search(q1, None, q2, d2, n=n, k=k, first_index=index, block_size=10)
    expected = []
    for q, cands in zip(q2, first, strict=True):
        cands = cands[cands >= 0]
        expected.append(cands[np.argsort(-(d2[cands] @ q))[:k]])
    np.testing.assert_array_equal(rows, np.array(expected))


def test_cascade_pads_when_the_first_stage_finds_fewer_than_k():
    q1, d1, q2, d2 = _cascade_data()
    scores, rows = cascade_search(q1[:3], d1[:4], q2[:3], d2[:4], n=6, k=6)
    assert (rows[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all()
    assert set(rows[0, :4]) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="larger than the first stage"):
        cascade_search(q1, d1, q2, d2, n=3, k=5)


@pytest.mark.parametrize("block_size", [1, 13, 65536])
def test_exact_knn_in_blocks_equals_brute_force(block_size):
    _, docs, _, _ = _cascade_data()
    queries = docs[:20] + 0.1
    scores, rows = exact_knn(queries, docs, 7, block_size=block_size)
    expected = np.argsort(-(queries @ docs.T), axis=1)[:, :7]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ docs.T, expected, axis=1), rtol=1e-5)
    _, few = exact_knn(queries, docs[:3], 5, block_size=2)
    assert (few[:, 3:] == -1).all()


def test_recall_measures():
    retrieved = np.array([[3, 1, 2], [5, 6, 7]])
    assert recall_at_k(retrieved, [np.array([1, 9]), np.array([7])], k=2) == pytest.approx((0.5 + 0.0) / 2)
    assert recall_at_k(retrieved, [np.array([1, 9]), np.array([7])], k=3) == pytest.approx((0.5 + 1.0) / 2)
    assert (
        recall_at_k(retrieved, [np.array([], dtype=int), np.array([5])], k=1) == 1.0
    )  # empty targets skipped
    assert one_recall_at(retrieved, np.array([2, 9]), r=3) == 0.5
    with pytest.raises(ValueError, match="at least 4 results"):
        recall_at_k(retrieved, [np.array([1]), np.array([1])], k=4)
