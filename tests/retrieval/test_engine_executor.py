"""Execution: the paper's John Smith example, filter pushdown, top-K mode, scores, ordering, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from engine_fixtures import FORCED_PLANS, clustered, corpus_index, make_corpus, unit
from reference import evaluate, quantised_view

from ebr.retrieval.build import build_engine_index
from ebr.retrieval.executor import ExecutionError, QueryTimeoutError, execute
from ebr.retrieval.query import expand_text, parse

HYBRID = (
    "(and (or (term location:seattle) (term location:menlo_park)) (or $text "
    "(nn unified :radius 0.24 :nprobe 16)))"
)


@pytest.fixture(scope="module")
def smiths(trained):
    """Several John Smiths in different cities; the Seattle one's embedding is the query's neighbour."""
    rng = np.random.default_rng(3)
    query = clustered(rng, 1)[0]
    people = {
        1: ("seattle", unit(query + 0.05 * rng.standard_normal(16))),  # the John Smith wanted
        2: ("menlo_park", clustered(rng, 1)[0]),  # another city in the filter, unrelated embedding
        3: ("paris", unit(query + 0.05 * rng.standard_normal(16))),  # similar embedding, wrong city
        4: ("lyon", clustered(rng, 1)[0]),
    }
    doc_ids, terms, vectors = [], [], []
    for doc_id, (city, vector) in people.items():
        doc_ids.append(doc_id)
        terms.append(["vertical:people", "text:john", "text:smith", f"location:{city}"])
        vectors.append(vector)
    filler = make_corpus(seed=8, n=300)  # other people; those in the two cities are unlike the query
    for row, doc_terms in enumerate(filler.terms):
        if {"location:seattle", "location:menlo_park"} & set(doc_terms):
            filler.embeddings["unified"][row] = unit(-query + 0.3 * rng.standard_normal(16))
    index = build_engine_index(
        np.concatenate([doc_ids, filler.doc_ids]),
        terms + filler.terms,
        {k: np.concatenate([np.stack(vectors), filler.embeddings[k]]) for k in ("unified", "text")},
        trained,
    )
    return index, query


def test_the_misspelled_query_finds_the_john_smith_of_seattle(smiths) -> None:
    index, query = smiths
    misspelled = expand_text(parse(HYBRID), "john smithe")
    hits = execute(index, misspelled, {"unified": query})
    assert hits.doc_ids.tolist() == [1]
    assert hits.scores[0] >= 1 - 0.24
    # spelled right, the term branch alone finds both John Smiths of the two cities, nn adds nothing new
    spelled = execute(index, expand_text(parse(HYBRID), "john smith"), {"unified": query})
    assert set(spelled.doc_ids.tolist()) == {1, 2}
    assert spelled.doc_ids[0] == 1  # ordered by quantised cosine similarity
    # without the location filter the nearby Paris John Smith is found as well
    anywhere = execute(index, parse("(nn unified :radius 0.24 :nprobe 16)"), {"unified": query})
    assert {1, 3} <= set(anywhere.doc_ids.tolist())


def test_the_planner_pushes_selective_filters_into_the_nn(trained) -> None:
    corpus = make_corpus(seed=21, n=2000)
    corpus.terms[7].append("location:rare")
    corpus.terms[9].append("location:rare")
    index = corpus_index(corpus, trained)
    q = {"unified": clustered(np.random.default_rng(0), 1)[0]}
    hits = execute(index, parse("(and (nn unified :radius 2 :nprobe 16) (term location:rare))"), q)
    (stats,) = hits.nn
    assert stats.plan == "candidates" and stats.allowed == 2 and stats.codes_estimate == 2000
    assert sorted(hits.doc_ids.tolist()) == sorted(corpus.doc_ids[[7, 9]].tolist())
    # a filter larger than the lists to scan is not walked document by document: faiss scans the lists
    wide = execute(index, parse("(and (term vertical:people) (nn unified :radius 0.3 :nprobe 2))"), q)
    (stats,) = wide.nn
    assert stats.plan in ("scan", "selector") and stats.allowed > stats.codes_estimate
    # an nn at the top has nothing to push down
    assert execute(index, parse("(nn unified :radius 0.3 :nprobe 2)"), q).nn[0].plan == "scan"


@pytest.mark.parametrize("plan", sorted(FORCED_PLANS))
def test_every_plan_gives_the_reference_set(trained, plan: str) -> None:
    corpus = make_corpus(seed=22, n=1500)
    index = corpus_index(corpus, trained)
    docs, q = corpus.doc_terms(), {"unified": clustered(np.random.default_rng(4), 1)[0]}
    for expr in (
        "(and (term vertical:people) (nn unified :radius 0.5 :nprobe 16))",
        "(and (term location:oslo) (nn unified :radius 0.7 :nprobe 5))",
        "(and (term text:w1) (not (term text:w2)) "
        "(or (term location:paris) (nn unified :radius 0.4 :nprobe 3)))",
    ):
        node = parse(expr)
        got = execute(index, node, q, costs=FORCED_PLANS[plan])
        assert [s.plan for s in got.nn] == [plan.split("-")[0]]
        want = evaluate(node, docs, {"unified": quantised_view(index, "unified")}, q)
        assert not want.ambiguous
        assert set(got.doc_ids.tolist()) == set(want.scores)


def test_top_k_takes_the_k_nearest_before_the_rest_of_the_expression(trained) -> None:
    corpus = make_corpus(seed=4, n=600)
    index = corpus_index(corpus, trained)
    q = {"unified": clustered(np.random.default_rng(1), 1)[0]}
    nearest = execute(index, parse("(nn unified :k 30 :nprobe 16)"), q)
    assert len(nearest.doc_ids) == 30
    filtered = execute(index, parse("(and (term location:paris) (nn unified :k 30 :nprobe 16))"), q)
    in_paris = {int(d) for d, t in zip(corpus.doc_ids, corpus.terms, strict=True) if "location:paris" in t}
    assert set(filtered.doc_ids.tolist()) == set(nearest.doc_ids.tolist()) & in_paris
    # radius mode filters first: every Paris document within the radius, not only those in the global top 30
    radius = execute(index, parse("(and (term location:paris) (nn unified :radius 1.0 :nprobe 16))"), q)
    assert len(radius.doc_ids) > len(filtered.doc_ids)


def test_scores_limit_order_and_term_only_matches(trained) -> None:
    corpus = make_corpus(seed=6, n=300)
    index = corpus_index(corpus, trained)
    q = {"unified": clustered(np.random.default_rng(2), 1)[0]}
    node = parse("(or (term text:w0) (nn unified :radius 0.2 :nprobe 4))")
    full = execute(index, node, q)
    assert not np.isnan(full.scores).any()  # term-only matches are scored from their codes
    assert np.all(np.diff(full.scores) <= 0)
    top = execute(index, node, q, limit=5)
    assert top.doc_ids.tolist() == full.doc_ids[:5].tolist() and top.total == full.total
    by_id = execute(index, node, q, order="doc_id")
    assert by_id.doc_ids.tolist() == sorted(full.doc_ids.tolist())
    plain = execute(index, parse("(term text:w0)"), {})
    assert np.isnan(plain.scores).all()


def test_cluster_terms_are_the_faiss_lists(trained) -> None:
    corpus = make_corpus(seed=7, n=300)
    index = corpus_index(corpus, trained)
    sizes = [execute(index, parse(f"(term nn.unified:{i})"), {}).total for i in range(16)]
    assert sum(sizes) == 300
    assert execute(index, parse("(term nn.unified:99)"), {}).total == 0


def test_execution_errors_and_deadline(trained) -> None:
    index = corpus_index(make_corpus(seed=9, n=50), trained)
    with pytest.raises(ExecutionError, match="unknown embedding key 'ensemble'") as err:
        execute(index, parse("(and (term a:b) (nn ensemble :k 3))"), {})
    assert err.value.position == 16
    with pytest.raises(ExecutionError, match="no query embedding"):
        execute(index, parse("(nn unified :k 3)"), {})
    with pytest.raises(QueryTimeoutError):
        execute(index, parse("(term text:w1)"), {}, deadline=time.monotonic() - 1)
