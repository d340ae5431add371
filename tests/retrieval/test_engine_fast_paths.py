"""The executor's fast paths: the filter cache (and its invalidation) and the top-K push-down, against the
full evaluation and the brute-force reference, ties included."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from engine_fixtures import (
    FACTORIES,
    FORCED_PLANS,
    LOCATIONS,
    VERTICALS,
    WORDS,
    clustered,
    corpus_index,
    make_corpus,
)
from reference import EPSILON, evaluate, quantised_view

from ebr.config import engine_defaults
from ebr.retrieval.documents import Document, Update
from ebr.retrieval.executor import execute, push_down_shape
from ebr.retrieval.filter_cache import FilterCache, shared_cache
from ebr.retrieval.query import NN, And, Fuse, Node, Not, Or, Rerank, Term, parse

PLANS = {**FORCED_PLANS, "default": engine_defaults().planner}
FILTER_TERMS = [*LOCATIONS, *VERTICALS, *WORDS[:4]]


@pytest.fixture(scope="module")
def world(trained):
    """600 documents; every document of the second half has the embeddings of one of the first 60, so that
    scores tie exactly (same codes) in groups of up to six."""
    corpus = make_corpus(seed=21, n=600)
    rng = np.random.default_rng(4)
    for key in FACTORIES:
        corpus.embeddings[key][300:] = corpus.embeddings[key][rng.integers(60, size=300)]
    index = corpus_index(corpus, trained)
    views = {k: quantised_view(index, k) for k in FACTORIES}
    return index, corpus.doc_terms(), views


def random_filter(rng: np.random.Generator) -> Node:
    term = Term(FILTER_TERMS[int(rng.integers(len(FILTER_TERMS)))])
    kind = rng.integers(4)
    if kind == 0:
        return Not(term)
    if kind == 1:
        return Or((term, Term(FILTER_TERMS[int(rng.integers(len(FILTER_TERMS)))])))
    return term


def random_query(rng: np.random.Generator) -> tuple[Node, dict[str, np.ndarray]]:
    key = sorted(FACTORIES)[int(rng.integers(len(FACTORIES)))]
    radius = float(rng.choice([0.2, 0.4, 0.7, 1.0, 2.0]))
    nn = NN(key, int(rng.choice([1, 2, 4, 16])), radius=radius)
    filters = [random_filter(rng) for _ in range(int(rng.integers(0, 3)))]
    children = filters + [nn]
    rng.shuffle(children)
    root = nn if not filters and rng.random() < 0.5 else And(tuple(children))
    return root, {k: clustered(rng, 1)[0] for k in FACTORIES}


def top_of_reference(expected: dict[int, float | None], limit: int) -> tuple[list[int], bool]:
    """The reference's first `limit` results (score desc, ties by doc id), and whether the order is ambiguous
    there (two neighbours within EPSILON that are not exactly equal: the engine's float32 may swap them)."""
    ranked = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    scores = [s for _, s in ranked[: limit + 1]]
    ambiguous = any(0 < abs(a - b) < EPSILON for a, b in zip(scores, scores[1:], strict=False))
    return [d for d, _ in ranked[:limit]], ambiguous


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_push_down_equals_the_full_evaluation_and_the_reference(world, plan) -> None:
    index, docs, views = world
    costs = PLANS[plan]
    rng = np.random.default_rng(sorted(PLANS).index(plan))
    checked = ties = fetched_more = 0
    for _ in range(120):
        root, vectors = random_query(rng)
        limit = int(rng.choice([1, 2, 3, 5, 10, 40]))
        hits = execute(index, root, vectors, limit=limit, costs=costs)
        full = execute(index, root, vectors, costs=costs)  # no limit: every match, no push-down
        if not hits.nn:  # the filter allows nothing: the nn never ran
            assert len(hits.doc_ids) == len(full.doc_ids) == 0
            continue
        assert all(s.top_k is None for s in full.nn)
        if full.nn and hits.nn[0].plan == full.nn[0].plan:  # the same scan: identical results
            assert hits.doc_ids.tolist() == full.doc_ids[:limit].tolist(), str(root)
            assert hits.scores.tolist() == full.scores[:limit].tolist()
        if hits.total_exact:
            assert hits.total == full.total
        else:
            assert limit < hits.total <= full.total
        expected = evaluate(root, docs, views, vectors)
        if expected.ambiguous:
            continue
        want, ambiguous = top_of_reference(expected.scores, limit)
        if ambiguous:
            continue
        assert hits.doc_ids.tolist() == want, str(root)
        for doc_id, score in zip(hits.doc_ids.tolist(), hits.scores.tolist(), strict=True):
            assert abs(score - expected.scores[doc_id]) < EPSILON
        checked += 1
        scores = hits.scores.tolist()
        ties += any(a == b for a, b in zip(scores, scores[1:], strict=False))
        fetched_more += hits.nn[0].top_k is not None and hits.nn[0].top_k > limit + 1
    assert checked >= 80
    assert ties >= 5  # exact ties among the results, ordered by doc id
    if plan != "candidates":
        assert fetched_more >= 1  # a tie at the limit made faiss fetch more


@pytest.mark.parametrize(
    "expr",
    [
        "(fuse :bm25 0.5 (and (term location:paris) (nn unified :radius 1 :nprobe 4)))",
        "(rerank text :n 5 (and (term location:paris) (nn unified :radius 1 :nprobe 4)))",
        "(and (term location:paris) (nn unified :radius 1 :nprobe 4) (nn text :radius 1 :nprobe 4))",
        "(and (term location:paris) (or (nn unified :radius 1 :nprobe 4) (term vertical:people)))",
        "(and (term text:w1 :score) (nn unified :radius 1 :nprobe 4))",
        "(and (term location:paris) (nn unified :k 20 :nprobe 4))",
        "(or (term location:paris) (nn unified :radius 1 :nprobe 4))",
    ],
)
def test_push_down_only_where_the_nn_score_alone_orders(world, expr) -> None:
    """A ranking operator, a second scoring operator, a nested or top-K nn: the full evaluation runs."""
    index, _, _ = world
    root = parse(expr)
    assert push_down_shape(root) is None
    vectors = {k: clustered(np.random.default_rng(1), 1)[0] for k in FACTORIES}
    hits = execute(index, root, vectors, limit=3, query_text="w1")
    assert all(s.top_k is None and s.complete for s in hits.nn)
    full = execute(index, root, vectors, query_text="w1")
    assert hits.doc_ids.tolist() == full.doc_ids[:3].tolist()
    assert hits.total == full.total and hits.total_exact


def test_order_by_doc_id_or_no_limit_runs_in_full(world) -> None:
    index, _, _ = world
    root = parse("(and (term location:paris) (nn unified :radius 2 :nprobe 16))")
    vectors = {"unified": clustered(np.random.default_rng(2), 1)[0]}
    by_id = execute(index, root, vectors, limit=3, order="doc_id")
    assert by_id.nn[0].top_k is None and by_id.total_exact
    pushed = execute(index, root, vectors, limit=3)
    assert pushed.nn[0].top_k == 4 or pushed.nn[0].plan == "candidates"
    assert len(pushed.doc_ids) == 3


def test_a_lower_bound_total_is_flagged(world) -> None:
    index, _, _ = world
    root = parse("(and (term vertical:people) (nn unified :radius 2 :nprobe 16))")
    vectors = {"unified": clustered(np.random.default_rng(3), 1)[0]}
    costs = FORCED_PLANS["selector-bitmap"]
    hits = execute(index, root, vectors, limit=5, costs=costs)
    full = execute(index, root, vectors, costs=costs)
    assert not hits.total_exact and 5 < hits.total < full.total
    assert hits.doc_ids.tolist() == full.doc_ids[:5].tolist()
    tight = parse("(and (term vertical:people) (nn unified :radius 0.05 :nprobe 16))")  # few within it
    small = execute(index, tight, vectors, limit=5, costs=costs)
    assert small.total_exact and small.total == execute(index, tight, vectors, costs=costs).total


def search(index, root, vectors, costs, limit=5):
    return execute(index, root, vectors, limit=limit, costs=costs)


@pytest.mark.parametrize("plan", ["selector-bitmap", "selector-hash", "candidates"])
def test_cached_filters_see_every_change(trained, plan) -> None:
    """A search after an add, an update, a delete or a compaction sees it, though the filter was cached."""
    costs = PLANS[plan]
    corpus = make_corpus(seed=31, n=200)
    index = corpus_index(corpus, trained)
    query = clustered(np.random.default_rng(7), 1)[0]
    vectors = {"unified": query}
    root = parse("(and (term location:oslo) (nn unified :radius 2 :nprobe 16))")
    cache = shared_cache(costs.filter_cache_bytes)
    first = search(index, root, vectors, costs)
    hits_before = cache.hits
    assert search(index, root, vectors, costs).doc_ids.tolist() == first.doc_ids.tolist()
    assert cache.hits > hits_before  # the second search used the cached filter

    index.add(Document(7, ["location:oslo"], {"unified": query}))  # the query's own vector: the best
    assert search(index, root, vectors, costs).doc_ids[0] == 7
    index.update(Update(7, ["location:lyon"]))  # leaves the filter
    assert 7 not in search(index, root, vectors, costs).doc_ids.tolist()
    index.update(Update(7, ["location:oslo"]))  # back, with its code kept
    assert search(index, root, vectors, costs).doc_ids[0] == 7
    best = int(search(index, root, vectors, costs).doc_ids[1])
    index.delete(best)
    assert best not in search(index, root, vectors, costs, limit=50).doc_ids.tolist()
    compacted = index.compacted()
    after = search(compacted, root, vectors, costs, limit=50)
    assert after.doc_ids.tolist() == search(index, root, vectors, costs, limit=50).doc_ids.tolist()
    docs = {int(d): dict.fromkeys(compacted.document_terms(i)) for i, d in enumerate(compacted.doc_ids)}
    views = {k: quantised_view(compacted, k) for k in FACTORIES}
    expected = evaluate(root, docs, views, vectors)
    want, ambiguous = top_of_reference(expected.scores, 50)
    if not (expected.ambiguous or ambiguous):
        assert after.doc_ids.tolist() == want


def test_the_cache_is_bounded_and_drops_stale_entries(world) -> None:
    index, _, _ = world
    cache = FilterCache(max_bytes=10_000)
    ids = np.arange(500, dtype=np.int64)  # 4,000 bytes
    for i in range(5):
        cache.get(index, ("f", i), lambda: ids)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 2  # the least recently used went first
    big = cache.get(index, ("big",), lambda: np.arange(5_000, dtype=np.int64))
    assert ("big",) not in {k[1] for k in cache._entries} and len(big.ids) == 5_000  # too big: not kept
    entry = cache.get(index, ("f", 4), lambda: ids)
    entry.get_selector(index.internal_count, use_bitmap=False)  # a hash set: grows the entry past the budget
    assert cache.bytes <= cache.max_bytes
    cache.resize(0)
    assert len(cache) == 0 and cache.bytes == 0


def test_threads_share_the_cache(world) -> None:
    index, _, _ = world
    costs = replace(PLANS["selector-bitmap"], filter_cache_bytes=1 << 20)
    rng = np.random.default_rng(9)
    queries = [random_query(rng) for _ in range(40)]
    expected = [execute(index, q, v, limit=5, costs=costs).doc_ids.tolist() for q, v in queries]
    failures = []

    def worker(offset: int) -> None:
        for i in range(len(queries)):
            root, vectors = queries[(i + offset) % len(queries)]
            got = execute(index, root, vectors, limit=5, costs=costs).doc_ids.tolist()
            if got != expected[(i + offset) % len(queries)]:
                failures.append(str(root))

    threads = [threading.Thread(target=worker, args=(7 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_other_ranking_shapes_are_unchanged(world) -> None:
    """Fuse and rerank over a cached filter give the full evaluation's results (the cache is used there)."""
    index, docs, views = world
    vectors = {k: clustered(np.random.default_rng(5), 1)[0] for k in FACTORIES}
    for root in (
        Fuse(And((Term("location:paris"), NN("unified", 4, radius=1.0))), bm25=0.5),
        Rerank("text", 5, And((Term("vertical:people"), NN("unified", 4, radius=1.0)))),
    ):
        expected = evaluate(root, docs, views, vectors, query_text="w1")
        hits = execute(index, root, vectors, query_text="w1")
        again = execute(index, root, vectors, query_text="w1")
        assert hits.doc_ids.tolist() == again.doc_ids.tolist()
        if not expected.ambiguous:
            assert set(hits.doc_ids.tolist()) == set(expected.scores)
