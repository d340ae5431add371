"""Ranking: BM25 by hand (through updates, deletes and compaction), $anytext, both fusions, rerank."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from engine_fixtures import clustered, corpus_index, make_corpus, unit

from ebr.config import engine_defaults
from ebr.retrieval.build import build_engine_index
from ebr.retrieval.documents import Document, Update, parse_terms
from ebr.retrieval.executor import ExecutionError, Hits, RankingStats, execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.query import Or, expand_text, parse
from ebr.retrieval.scoring import bm25_scores
from ebr.retrieval.terms import document_terms

K1, B = 0.9, 0.4


def term_score(idf: float, tf: float, dl: float, avgdl: float) -> float:
    """One query token's BM25 term, written out as docs/engine.md gives it."""
    return idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avgdl))


def idf(n: int, df: int) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def scores_of(hits: Hits) -> dict[int, float | None]:
    return {d["doc_id"]: d["score"] for d in hits.as_dicts()}


def bm25_of(index: EngineIndex, doc_ids: list[int], text: str = "john smith") -> list[float]:
    ids = np.array([index.internal_id(d) for d in doc_ids])
    return bm25_scores(index, ids, text, engine_defaults().bm25).tolist()


def test_bm25_equals_a_hand_computation_through_changes_and_compaction() -> None:
    # text lengths 3, 2, 3: doc 1 holds john twice (a payload), doc 3 none of the query's tokens
    docs = [[("text:john", 2.0), "text:smith"], ["text:john", "text:doe"], [("text:mary", 3.0), "vertical:x"]]
    index = EngineIndex.from_documents(np.array([1, 2, 3]), docs, {})
    assert index.text_lengths.tolist() == [3.0, 2.0, 3.0] and index.mean_text_length == 8 / 3
    want = [
        term_score(idf(3, 2), 2, 3, 8 / 3) + term_score(idf(3, 1), 1, 3, 8 / 3),
        term_score(idf(3, 2), 1, 2, 8 / 3),
        0.0,
    ]
    assert bm25_of(index, [1, 2, 3]) == pytest.approx(want, rel=1e-12)
    assert bm25_of(index, [1, 2, 3], "") == [0.0, 0.0, 0.0]
    # doc 2 now holds smith four times and no john: N 3, avgdl 10/3, df(john) 1, df(smith) 2
    index.update(Update(2, ["text:smith"], {}, {"text:smith": 4.0}))
    assert index.live_document_frequency("text:john") == 1 and index.mean_text_length == 10 / 3
    want = [
        term_score(idf(3, 1), 2, 3, 10 / 3) + term_score(idf(3, 2), 1, 3, 10 / 3),
        term_score(idf(3, 2), 4, 4, 10 / 3),
    ]
    assert bm25_of(index, [1, 2]) == pytest.approx(want, rel=1e-12)
    # without doc 3: N 2, avgdl 7/2
    index.delete(3)
    want = [
        term_score(idf(2, 1), 2, 3, 3.5) + term_score(idf(2, 2), 1, 3, 3.5),
        term_score(idf(2, 2), 4, 4, 3.5),
    ]
    assert bm25_of(index, [1, 2]) == pytest.approx(want, rel=1e-12)
    compacted = index.compacted()
    assert compacted.text_lengths.tolist() == [3.0, 4.0] and compacted.mean_text_length == 3.5
    assert bm25_of(compacted, [1, 2]) == pytest.approx(want, rel=1e-12)
    # k1 and b are parameters: b = 0 ignores the lengths
    flat = bm25_scores(compacted, np.array([0]), "smith", replace(engine_defaults().bm25, k1=1.2, b=0.0))
    assert flat.tolist() == pytest.approx([idf(2, 2) * 1 * 2.2 / (1 + 1.2)])


def test_anytext_is_the_or_of_the_query_terms() -> None:
    node = parse("(and (term vertical:people) $anytext)")
    assert str(expand_text(node, "John smith JOHN")) == (
        "(and (term vertical:people) (or (term text:john) (term text:smith)))"
    )
    assert expand_text(parse("$anytext"), " ?! ") == Or((), 0)
    index = EngineIndex.from_documents(
        np.array([1, 2, 3]), [["text:john"], ["text:smith"], ["text:mary"]], {}
    )
    assert execute(index, expand_text(parse("$anytext"), "john smith"), {}).doc_ids.tolist() == [1, 2]
    assert execute(index, expand_text(parse("$text"), "john smith"), {}).total == 0


@pytest.fixture
def tiny(trained):
    """Four people: BM25 for "john smith" ranks 10, 40, 20 (30 holds neither token); the cosine with the
    query vector ranks 10, 30, 20 (40 has no embedding)."""
    rng = np.random.default_rng(7)
    q, other = clustered(rng, 2)
    vectors = np.stack([q, unit(-q + 0.2 * other), unit(q + 0.8 * other)])
    docs = [document_terms("people", t) for t in ("John Smith smith", "John", "Mary")]
    index = build_engine_index(np.array([10, 20, 30]), docs, {"unified": vectors, "text": vectors}, trained)
    names, payloads = parse_terms(document_terms("people", "John Smith"))
    index.add(Document(40, names, {}, payloads))
    return index, q, scores_of(execute(index, parse("(nn unified :radius 2 :nprobe 16)"), {"unified": q}))


def fused(index: EngineIndex, q: np.ndarray, expr: str, text: str = "john smith") -> list[tuple[int, float]]:
    hits = execute(index, expand_text(parse(expr), text), {"unified": q}, query_text=text)
    return [(d["doc_id"], d["score"]) for d in hits.as_dicts()]


CHILD = "(or (term vertical:people) (nn unified :radius 2 :nprobe 16))"  # all four, 40 unscored


def test_rrf_sums_reciprocal_ranks(tiny) -> None:
    index, q, cos = tiny
    assert sorted(cos, key=cos.get, reverse=True) == [10, 30, 20]
    text = dict(zip([10, 20, 30, 40], bm25_of(index, [10, 20, 30, 40]), strict=True))
    assert sorted(text, key=text.get, reverse=True)[:3] == [10, 40, 20] and text[30] == 0
    assert fused(index, q, f"(fuse :rrf 60 {CHILD})") == [
        (10, 1 / 61 + 1 / 61),
        (20, 1 / 63 + 1 / 63),
        (30, 1 / 62),  # only in the cosine ranking; ties with 40 (only in the BM25 one), first by doc id
        (40, 1 / 62),
    ]
    assert fused(index, q, f"(fuse :rrf 1 {CHILD})", text="")[-1] == (40, 0.0)  # in no ranking


def test_linear_fusion_normalises_bm25_and_counts_a_missing_cosine_as_zero(tiny) -> None:
    index, q, cos = tiny
    text = dict(zip([10, 20, 30, 40], bm25_of(index, [10, 20, 30, 40]), strict=True))
    best = max(text.values())
    got = dict(fused(index, q, f"(fuse :bm25 0.3 {CHILD})"))
    want = {d: 0.3 * text[d] / best + 0.7 * cos.get(d, 0.0) for d in text}
    assert got == pytest.approx(want, abs=1e-6)
    assert fused(index, q, f"(fuse :bm25 1 {CHILD})")[:2] == [(10, 1.0), (40, text[40] / best)]
    assert dict(fused(index, q, f"(fuse :bm25 0 {CHILD})")) == pytest.approx({**cos, 40: 0.0}, abs=1e-6)
    assert dict(fused(index, q, f"(fuse :bm25 0.3 {CHILD})", text="")) == pytest.approx(
        {d: 0.7 * cos.get(d, 0.0) for d in text},
        abs=1e-6,  # no BM25 above 0: no BM25 part
    )
    hits = execute(index, parse("(fuse :bm25 0.3 (term vertical:people))"), {}, query_text="john")
    assert hits.ranking == [RankingStats("fuse", "bm25", 0.3, 4, 4)]


def test_rerank_keeps_the_top_n_of_the_first_stage_and_orders_by_its_key(trained) -> None:
    corpus = make_corpus(seed=51, n=300)
    index = corpus_index(corpus, trained)
    rng = np.random.default_rng(3)
    vectors = {"text": clustered(rng, 1)[0], "unified": clustered(rng, 1)[0]}
    first = execute(index, parse("(nn text :k 50 :nprobe 8)"), vectors)
    assert first.scores[9] - first.scores[10] > 1e-4  # the cut is clear
    expr = parse("(rerank unified :n 10 (nn text :k 50 :nprobe 8))")
    hits = execute(index, expr, vectors)
    assert set(hits.doc_ids.tolist()) == set(first.doc_ids[:10].tolist()) and hits.total == 10
    everything = scores_of(execute(index, parse("(nn unified :radius 2 :nprobe 16)"), vectors))
    assert hits.scores.tolist() == pytest.approx([everything[d] for d in hits.doc_ids.tolist()], abs=1e-6)
    assert np.all(np.diff(hits.scores) <= 0)
    assert hits.ranking == [RankingStats("rerank", "unified", 10, 50, 10)]
    by_id = execute(index, expr, vectors, order="doc_id", limit=4)
    assert by_id.doc_ids.tolist() == sorted(hits.doc_ids.tolist())[:4] and by_id.total == 10
    # a document of the first stage without an embedding under the key goes last, with no score
    index.add(Document(7, ["vertical:people"], {"text": vectors["text"]}))
    hits = execute(index, expr, vectors)
    assert hits.doc_ids[-1] == 7 and math.isnan(hits.scores[-1]) and hits.total == 10
    # a rerank of a rerank: the inner one's scores are the outer one's first stage
    nested = execute(
        index, parse("(rerank text :n 3 (rerank unified :n 10 (nn text :k 50 :nprobe 8)))"), vectors
    )
    assert set(nested.doc_ids.tolist()) == set(hits.doc_ids[:3].tolist())
    assert [s.operator for s in nested.ranking] == ["rerank", "rerank"]


def test_rerank_keys_must_exist_and_need_a_query_vector(trained) -> None:
    index = corpus_index(make_corpus(seed=52, n=50), trained)
    with pytest.raises(ExecutionError, match="unknown embedding key 'other'") as err:
        execute(index, parse("(rerank other :n 5 (term a:b))"), {})
    assert err.value.position == 0
    with pytest.raises(ExecutionError, match="no query embedding for rerank key 'unified'"):
        execute(index, parse("(rerank unified :n 5 (term vertical:people))"), {})
