"""The engine against the brute-force reference: random expressions (sometimes under ranking operators),
random query texts and vectors, random updates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from engine_fixtures import (
    FACTORIES,
    FORCED_PLANS,
    LOCATIONS,
    TEXT_PAYLOADS,
    VERTICALS,
    WORDS,
    clustered,
    corpus_index,
    make_corpus,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import EPSILON, Docs, evaluate, quantised_view

from ebr.config import PlannerCosts, engine_defaults
from ebr.retrieval.documents import parse_terms
from ebr.retrieval.executor import execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.query import NN, And, AnyText, Fuse, Not, Or, Rerank, Term, Text, expand_text, parse

QUERIES = {key: clustered(np.random.default_rng(99 + i), 64) for i, key in enumerate(FACTORIES)}
CLUSTER_TERMS = [f"nn.unified:{i}" for i in range(16)] + [f"nn.text:{i}" for i in range(8)]

plain_terms = st.sampled_from([*LOCATIONS, *WORDS, *VERTICALS, "text:absent", *CLUSTER_TERMS[:3]]).map(Term)
bounds = st.one_of(st.none(), st.sampled_from(TEXT_PAYLOADS), st.floats(-1.0, 4.5).map(lambda x: round(x, 2)))


def payload_term(term: str, low: float | None, high: float | None, score: bool) -> Term:
    if low is not None and high is not None and np.float32(low) > np.float32(high):
        low, high = high, low
    return Term(term, 0, low, high, score)


payload_terms = st.builds(  # text terms carry payloads in the corpora; the others never do
    payload_term, st.sampled_from([*WORDS, LOCATIONS[0], "text:absent"]), bounds, bounds, st.booleans()
)
terms = st.one_of(plain_terms, payload_terms)
nn_radius = st.builds(
    lambda key, r, p: NN(key, p, radius=r),
    st.sampled_from(sorted(FACTORIES)),
    st.floats(0.0, 1.3).map(lambda r: round(r, 3)),
    st.integers(1, 16),
)
nn_top_k = st.builds(
    lambda key, k, p: NN(key, p, k=k),
    st.sampled_from(sorted(FACTORIES)),
    st.integers(1, 60),
    st.integers(1, 16),
)
expressions = st.recursive(
    st.one_of(terms, nn_radius, nn_top_k, st.just(Text()), st.just(AnyText())),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda c: And(tuple(c))),
        st.lists(inner, max_size=4).map(lambda c: Or(tuple(c))),
        inner.map(Not),
    ),
    max_leaves=10,
)
fused = st.builds(
    lambda child, linear, weight, k: Fuse(child, bm25=weight) if linear else Fuse(child, rrf=k),
    st.one_of(expressions, expressions.map(lambda e: Or((e, AnyText())))),  # the latter: text matches
    st.booleans(),
    st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0).map(lambda w: round(w, 2))),
    st.integers(1, 100),
)


def reranked(child: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        lambda key, n, c: Rerank(key, n, c), st.sampled_from(sorted(FACTORIES)), st.integers(1, 60), child
    )


queries = st.one_of(expressions, fused, reranked(st.one_of(expressions, fused)), reranked(reranked(fused)))
tokens = st.sampled_from([w.partition(":")[2] for w in WORDS] + ["absent"])
query_texts = st.one_of(st.just(""), st.lists(tokens, min_size=1, max_size=4).map(" ".join))
vector_rows = st.integers(0, 63)
FORCE = {**FORCED_PLANS, "default": engine_defaults().planner}


def assert_matches_reference(
    index: EngineIndex, docs: Docs, query, row: int, costs: PlannerCosts, text: str
) -> None:
    vectors = {key: QUERIES[key][row] for key in FACTORIES}
    expr = expand_text(query, text)
    views = {k: quantised_view(index, k) for k in FACTORIES}
    expected = evaluate(expr, docs, views, vectors, query_text=text)
    assume(not expected.ambiguous)
    hits = execute(index, expr, vectors, costs=costs, query_text=text)
    got = dict(zip(hits.doc_ids.tolist(), hits.scores.tolist(), strict=True))
    assert set(got) == set(expected.scores), str(expr)
    assert hits.total == len(got)
    for doc_id, score in got.items():
        want = expected.scores[doc_id]
        if want is None:
            assert math.isnan(score)
        else:
            assert abs(score - want) < EPSILON
    ordered = [(-s if not math.isnan(s) else math.inf, d) for d, s in got.items()]
    assert [d for _, d in sorted(ordered)] == hits.doc_ids.tolist()


class World:
    def __init__(self, index: EngineIndex, docs: Docs):
        self.index, self.docs = index, docs

    def __repr__(self) -> str:
        return f"World({self.index.live_count} documents)"


@pytest.fixture(scope="module")
def world(trained) -> World:
    corpus = make_corpus(seed=5, n=500, payloads=True)
    return World(corpus_index(corpus, trained), corpus.doc_terms())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries, text=query_texts, row=vector_rows, plan=st.sampled_from(sorted(FORCE)))
def test_random_expressions_equal_the_reference(world, query, text, row, plan) -> None:
    """Under each nn plan (forced by its costs) the engine equals the reference."""
    assert_matches_reference(world.index, world.docs, query, row, FORCE[plan], text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=queries)
def test_printed_expressions_parse_back(query) -> None:
    assert str(parse(str(query))) == str(query)


def term_lists(names: list[str]) -> st.SearchStrategy[list[tuple[str, float | None]]]:
    """Distinct terms, each with a payload or None."""
    pair = st.tuples(st.sampled_from(names), st.one_of(st.none(), st.sampled_from(TEXT_PAYLOADS)))
    return st.lists(pair, max_size=3, unique_by=lambda p: p[0])


change = st.one_of(
    st.tuples(
        st.just("add"),
        st.integers(0, 40),
        term_lists([*LOCATIONS, *WORDS]),
        st.sets(st.sampled_from(sorted(FACTORIES))),
    ),
    st.tuples(
        st.just("update"),
        st.integers(0, 40),
        st.one_of(st.none(), term_lists(WORDS)),
        st.sets(st.sampled_from(sorted(FACTORIES))),
    ),
    st.tuples(st.just("delete"), st.integers(0, 40), st.none(), st.just(set())),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(change, max_size=25),
    exprs=st.lists(queries, min_size=1, max_size=3),
    text=query_texts,
    row=vector_rows,
    compact=st.booleans(),
)
def test_realtime_changes_equal_the_reference(trained, changes, exprs, text, row, compact) -> None:
    """Adds, updates and deletes (terms with payloads, embeddings) are visible to the next query, before and
    after compaction; the reference is a plain dict of term -> payload dicts updated alongside."""
    from ebr.retrieval.documents import Document, Update

    corpus = make_corpus(seed=11, n=120, payloads=True)
    index = corpus_index(corpus, trained)
    docs = corpus.doc_terms()
    rng = np.random.default_rng(len(changes))
    pool = corpus.doc_ids[:20].tolist() + list(range(1, 21))  # existing ids and fresh ids
    for op, pick, new_terms, keys in changes:
        doc_id = pool[pick % len(pool)]
        vectors = {k: clustered(rng, 1)[0] for k in sorted(keys)}
        exists = index.internal_id(doc_id) is not None
        if op == "add" and not exists:
            names, payloads = parse_terms(new_terms)
            index.add(Document(doc_id, names, vectors, payloads))
            docs[doc_id] = dict(new_terms)
        elif op == "update" and exists:
            if new_terms is None:
                index.update(Update(doc_id, None, vectors))
            else:
                names, payloads = parse_terms(new_terms)
                index.update(Update(doc_id, names, vectors, payloads))
                docs[doc_id] = dict(new_terms)
        elif op == "delete" and exists:
            index.delete(doc_id)
            del docs[doc_id]
    if compact:
        index = index.compacted()
    assert index.live_count == len(docs)
    for expr in [Fuse(AnyText(), bm25=1.0), *exprs]:  # the first: BM25 of every text match
        assert_matches_reference(index, docs, expr, row, FORCE["default"], text)
