"""Fast-scan PQ and RaBitQ codes as (nn) fields, against a brute force over faiss's own estimates.

The brute force reads every document's estimated score from a separate plain faiss index (the same trained
quantisers, filled with `add_with_ids`, searched over all lists), picks the probed lists by a dense product
with the centroids, and applies the radius or the top K to those documents (tie-aware).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from engine_fixtures import FORCED_PLANS, LOCATIONS, D, clustered, make_corpus

from ebr.retrieval.build import build_engine_index
from ebr.retrieval.documents import Delete, Document, Update
from ebr.retrieval.executor import execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.quantized import NNField, UnsupportedIndexError, unsupported_reason
from ebr.retrieval.query import NN, And, Term

KEY = "unified"
SERVED = ["IVF16,PQ8x4fs", "OPQ8,IVF16,PQ8x4fs", "IVF16,RaBitQ", "IVF16,RaBitQ4"]
REFUSED = {
    "IVF16,PQ8x4fsr": "residual codes",
    "IVF16,RaBitQfs": "depend on the lists probed",
    "IVF16,PQ8x4fs,RFlat": "IndexRefineFlat",
}
N = 2_000
QUERIES = clustered(np.random.default_rng(77), 12)
TIE = 1e-6


def trained_index(factory: str) -> faiss.Index:
    faiss.omp_set_num_threads(1)
    index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(clustered(np.random.default_rng(0), 3_000))
    return index


@pytest.fixture(scope="module", params=SERVED)
def world(request) -> tuple[faiss.Index, object, EngineIndex]:
    trained = trained_index(request.param)
    corpus = make_corpus(seed=11, n=N)
    index = build_engine_index(corpus.doc_ids, corpus.terms, {KEY: corpus.embeddings[KEY]}, {KEY: trained})
    return trained, corpus, index


class Brute:
    """Every document's estimated score for a query, and its list, from a plain faiss index."""

    def __init__(self, trained: faiss.Index, vectors: np.ndarray, doc_ids: np.ndarray):
        self.index = faiss.clone_index(trained)
        self.index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        self.ivf = faiss.extract_index_ivf(self.index)
        self.doc_ids = doc_ids
        self.transforms = NNField("brute", self.index).to_ivf_space
        _, assign = self.ivf.quantizer.search(self.transforms(vectors), 1)
        self.lists = assign[:, 0]
        self.centroids = self.ivf.quantizer.reconstruct_n(0, self.ivf.nlist).astype(np.float64)

    def scores(self, query: np.ndarray) -> np.ndarray:
        self.ivf.nprobe = self.ivf.nlist
        scores, rows = self.index.search(query.reshape(1, -1), len(self.doc_ids))
        out = np.full(len(self.doc_ids), np.nan, dtype=np.float32)
        out[rows[0]] = scores[0]
        return out

    def probed(self, query: np.ndarray, nprobe: int) -> np.ndarray | None:
        """The rows in the `nprobe` lists nearest `query` (None: two centroids tie at the boundary)."""
        dots = self.centroids @ self.transforms(query)[0].astype(np.float64)
        order = np.sort(dots)[::-1]
        if nprobe < len(order) and order[nprobe - 1] - order[nprobe] < TIE:
            return None
        return np.isin(self.lists, np.argsort(-dots)[:nprobe])


def radius_expected(scores: np.ndarray, rows: np.ndarray, min_score: float) -> set[int] | None:
    near = np.abs(scores[rows] - np.float32(min_score)) < TIE
    return None if near.any() else set(np.flatnonzero(rows & (scores >= np.float32(min_score))).tolist())


def check_top_k(got: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int) -> None:
    """`got` (rows) is a top k of `scores` over `rows`: ties at the K-th score may be either way."""
    candidates = np.flatnonzero(rows)
    assert len(got) == min(k, len(candidates))
    if not len(got):
        return
    kth = np.sort(scores[candidates])[::-1][len(got) - 1]
    assert set(candidates[scores[candidates] > kth + TIE].tolist()) <= set(got.tolist())
    assert (scores[got] >= kth - TIE).all()


def rows_of(index: EngineIndex, doc_ids: np.ndarray, corpus_ids: np.ndarray) -> np.ndarray:
    place = {int(d): r for r, d in enumerate(corpus_ids.tolist())}
    return np.array([place[int(d)] for d in doc_ids.tolist()], dtype=np.int64)


def test_the_lists_are_the_cluster_terms(world) -> None:
    trained, corpus, index = world
    brute = Brute(trained, corpus.embeddings[KEY], corpus.doc_ids)
    for list_no in range(16):
        hits = execute(index, Term(f"nn.{KEY}:{list_no}"), {})
        assert set(hits.doc_ids.tolist()) == set(corpus.doc_ids[brute.lists == list_no].tolist())


@pytest.mark.parametrize("plan", sorted(FORCED_PLANS))
def test_radius_top_k_and_hybrid_equal_the_brute_force(world, plan) -> None:
    trained, corpus, index = world
    brute = Brute(trained, corpus.embeddings[KEY], corpus.doc_ids)
    location = np.array([LOCATIONS[0] in terms for terms in corpus.terms])
    checked = 0
    for row, query in enumerate(QUERIES):
        scores = brute.scores(query)
        for nprobe in (1, 3, 16):
            rows = brute.probed(query, nprobe)
            if rows is None:
                continue
            probed_scores = np.sort(scores[rows])[::-1]
            for min_score in {float(probed_scores[min(5 + row, len(probed_scores) - 1)]) - 1e-4, 0.5, -0.2}:
                for filtered in (False, True):
                    node = NN(KEY, nprobe, radius=1.0 - min_score)
                    expr = And((Term(LOCATIONS[0]), node)) if filtered else node
                    within = rows & location if filtered else rows
                    want = radius_expected(
                        scores, within, float(np.float32(1.0) - np.float32(1.0 - min_score))
                    )
                    if want is None:
                        continue
                    hits = execute(index, expr, {KEY: query}, costs=FORCED_PLANS[plan])
                    got = rows_of(index, hits.doc_ids, corpus.doc_ids)
                    assert set(got.tolist()) == want, (plan, row, nprobe, min_score, filtered)
                    np.testing.assert_array_equal(hits.scores, scores[got])  # one score per document
                    checked += 1
            for k in (1, 10, 40):
                for filtered in (False, True):
                    node = NN(KEY, nprobe, k=k)
                    expr = And((Term(LOCATIONS[0]), node)) if filtered else node
                    hits = execute(index, expr, {KEY: query}, costs=FORCED_PLANS[plan])
                    got = rows_of(index, hits.doc_ids, corpus.doc_ids)
                    if filtered:  # the top K of the probed lists, then the filter
                        top = execute(index, node, {KEY: query}, costs=FORCED_PLANS[plan])
                        top_rows = rows_of(index, top.doc_ids, corpus.doc_ids)
                        assert set(got.tolist()) == set(top_rows[location[top_rows]].tolist())
                    else:
                        check_top_k(got, scores, rows, k)
                    np.testing.assert_array_equal(hits.scores, scores[got])
    assert checked > 30


def all_results(index: EngineIndex) -> list[dict[int, float]]:
    out = []
    for query in QUERIES[:4]:
        for expr in (NN(KEY, 3, radius=0.6), And((Term(LOCATIONS[1]), NN(KEY, 16, radius=0.9)))):
            hits = execute(index, expr, {KEY: query})
            out.append(dict(zip(hits.doc_ids.tolist(), hits.scores.tolist(), strict=True)))
    return out


def codes_by_doc(index: EngineIndex) -> dict[int, bytes]:
    ids, codes = index.fields[KEY].all_entries()
    return {int(index.doc_ids[i]): code.tobytes() for i, code in zip(ids.tolist(), codes, strict=True)}


def test_realtime_changes_compaction_and_files(world, tmp_path: Path) -> None:
    trained, corpus, built = world
    index = build_engine_index(corpus.doc_ids, corpus.terms, {KEY: corpus.embeddings[KEY]}, {KEY: trained})
    assert codes_by_doc(index) == codes_by_doc(built)
    rng = np.random.default_rng(3)
    deleted = corpus.doc_ids[rng.choice(N, 300, replace=False)]
    gone = set(deleted.tolist())
    kept_embedding = [int(d) for d in corpus.doc_ids[:50] if int(d) not in gone]
    moving = [int(d) for d in corpus.doc_ids[-40:] if int(d) not in gone]
    moved = clustered(rng, len(moving))
    new_ids = np.arange(10**10, 10**10 + 60, dtype=np.int64)
    new_vectors = clustered(rng, 60)
    before = codes_by_doc(index)
    changes = [Delete(int(d)) for d in deleted]
    changes += [Update(d, [LOCATIONS[1], "text:w0"]) for d in kept_embedding]  # the code is copied
    changes += [Update(d, None, {KEY: v}) for d, v in zip(moving, moved, strict=True)]
    changes += [Document(int(d), [LOCATIONS[1]], {KEY: v}) for d, v in zip(new_ids, new_vectors, strict=True)]
    index.apply(changes)
    # the brute force over the changed corpus: same doc ids, vectors as changed
    live = {int(d): v for d, v in zip(corpus.doc_ids, corpus.embeddings[KEY], strict=True)}
    for d in deleted.tolist():
        live.pop(int(d), None)
    live.update(dict(zip(moving, moved, strict=True)))
    live.update({int(d): v for d, v in zip(new_ids.tolist(), new_vectors, strict=True)})
    doc_ids = np.array(sorted(live), dtype=np.int64)
    brute = Brute(trained, np.stack([live[d] for d in doc_ids.tolist()]), doc_ids)
    after = codes_by_doc(index)
    assert set(after) == set(live)
    assert all(after[d] == before[d] for d in kept_embedding)
    for query in QUERIES[:4]:
        scores = brute.scores(query)
        for nprobe in (2, 16):
            rows = brute.probed(query, nprobe)
            if rows is None:
                continue
            hits = execute(index, NN(KEY, nprobe, k=20), {KEY: query})
            got = rows_of(index, hits.doc_ids, doc_ids)
            check_top_k(got, scores, rows, 20)
            np.testing.assert_array_equal(hits.scores, scores[got])
            want = radius_expected(scores, rows, 0.55)
            if want is not None:
                hits = execute(index, NN(KEY, nprobe, radius=0.45), {KEY: query})
                assert set(rows_of(index, hits.doc_ids, doc_ids).tolist()) == want
    expected = all_results(index)
    compacted = index.compacted()
    assert codes_by_doc(compacted) == after
    assert all_results(compacted) == expected
    index.save(tmp_path / "engine")
    for mmap in (False, True):
        loaded = EngineIndex.load(tmp_path / "engine", mmap=mmap)
        assert codes_by_doc(loaded) == after
        assert all_results(loaded) == expected
        assert loaded.fields[KEY].memory_bytes() == compacted.fields[KEY].memory_bytes()
        loaded.apply([Delete(int(doc_ids[0]))])  # a loaded field changes too
        assert int(doc_ids[0]) not in codes_by_doc(loaded)


@pytest.mark.parametrize("factory", sorted(REFUSED))
def test_codes_the_engine_cannot_serve_are_refused_by_name(factory) -> None:
    trained = trained_index(factory)
    assert REFUSED[factory] in unsupported_reason(trained)
    with pytest.raises(UnsupportedIndexError, match=f"embedding key 'k'.*{REFUSED[factory]}"):
        NNField.empty_like("k", trained)
    assert unsupported_reason(trained_index("IVF16,PQ8x4fs")) is None
