"""A brute-force evaluator of the query language, the ground truth of the engine's tests.

It reads the same quantised data as the engine (each document's cluster and its code, decoded with faiss's
`sa_decode`) but shares none of its evaluation: every document is tested against every node with Python
sets and float64 numpy. Its nn picks the nprobe nearest centroids by a dense product with all centroids
and scores every document of those clusters. Documents are plain dicts term -> payload (None: no payload);
payloads and term bounds are compared as float32, as the index stores them.

BM25 is computed in float64 straight from the term dicts (a `text:` term's payload is its frequency, 1
without one, below 0 counting 0), and the ranking operators (fuse, rerank) from their definitions in
docs/engine.md.

Scores from the engine (faiss look-up-table sums in float32) and from here (float64 dot products of decoded
vectors) agree to about 1e-6. `EPSILON` is the tolerance of the tests: a result is *ambiguous* when a
score sits within EPSILON of a radius threshold or of the K-th score of a top-K, two centroids tie within
EPSILON at the nprobe boundary, the N-th and (N+1)-th first-stage scores of a rerank are within EPSILON, or
two neighbours of an RRF ranking are within EPSILON where swapping them would move their scores by EPSILON / 2
or more; set equality is required only for results that are not ambiguous. Exact ties there are not
ambiguous: ranking operators use nn scores decoded from the codes, so documents with the same code tie exactly
in the engine too, and both sides compute BM25 with the same float64 operations on the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np

from ebr.config import BM25Params, engine_defaults
from ebr.retrieval.quantized import NNField, coarse_lists
from ebr.retrieval.query import NN, And, Fuse, Node, Not, Or, Rerank, Term, nn_nodes, scored_terms
from ebr.retrieval.reader import IndexReader
from ebr.retrieval.terms import CLUSTER_FIELD_PREFIX, TEXT_PREFIX, query_terms

EPSILON = 1e-4


@dataclass
class QuantisedKey:
    """Brute-force view of one embedding key: every document's cluster and decoded vector."""

    field: NNField
    doc_ids: np.ndarray  # external ids of the documents with an embedding under this key
    lists: np.ndarray  # their cluster
    decoded: np.ndarray  # float64, quantised vectors in the IVF's space
    centroids: np.ndarray  # float64 (nlist, d_ivf)

    def query(self, vector: np.ndarray) -> np.ndarray:
        return self.field.to_ivf_space(vector)[0].astype(np.float64)


def quantised_view(index: IndexReader, key: str) -> QuantisedKey:
    """Read every code of `key` out of the faiss inverted lists and decode it."""
    nn_field = index.fields[key]
    internal, codes = nn_field.all_entries()
    decoded = nn_field.ivf.sa_decode(codes) if len(codes) else np.empty((0, nn_field.ivf.d), np.float32)
    lists = coarse_lists(codes, nn_field.ivf.coarse_code_size())
    quantizer = faiss.downcast_index(nn_field.ivf.quantizer)
    centroids = (
        quantizer.reconstruct_n(0, quantizer.ntotal) if isinstance(quantizer, faiss.IndexFlat) else None
    )
    if centroids is None:
        raise NotImplementedError("the reference evaluator needs a flat coarse quantiser")
    return QuantisedKey(
        nn_field, index.doc_ids[internal], lists, decoded.astype(np.float64), centroids.astype(np.float64)
    )


@dataclass
class ReferenceResult:
    scores: dict[int, float | None]  # doc id -> score of every result
    ambiguous: bool


Docs = Mapping[int, Mapping[str, float | None]]  # doc id -> its terms -> payload (None: none)


def _in_bounds(payload: float | None, node: Term) -> bool:
    if payload is None:
        return not node.bounded
    value = np.float32(payload)
    return (node.low is None or value >= np.float32(node.low)) and (
        node.high is None or value <= np.float32(node.high)
    )


def _frequency(payload: float | None) -> float:
    return 1.0 if payload is None else max(float(np.float32(payload)), 0.0)


def bm25_reference(docs: Docs, query_text: str | None, params: BM25Params) -> dict[int, float]:
    """Lucene's BM25 of every document for the query text, document by document in float64."""
    k1, b = params.k1, params.b
    lengths = {
        d: sum(_frequency(p) for t, p in terms.items() if t.startswith(TEXT_PREFIX))
        for d, terms in docs.items()
    }
    n = len(docs)
    mean_length = sum(lengths.values()) / n if n else 0.0
    out = dict.fromkeys(docs, 0.0)
    for term in query_terms(query_text):
        holders = [d for d, terms in docs.items() if term in terms]
        idf = math.log(1 + (n - len(holders) + 0.5) / (len(holders) + 0.5))
        for d in holders:
            tf = _frequency(docs[d][term])
            if tf > 0:
                out[d] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[d] / mean_length))
    return out


class _Evaluator:
    def __init__(
        self,
        docs: Docs,
        keys: Mapping[str, QuantisedKey],
        vectors: Mapping[str, np.ndarray],
        query_text: str | None,
        bm25: BM25Params,
    ):
        self.docs = docs
        self.all = set(docs)
        self.keys = keys
        self.vectors = vectors
        self.query_text = query_text
        self.bm25 = bm25
        self.ambiguous = False

    def ranked(self, node: Node) -> dict[int, float | None]:
        """doc id -> score of the results of a query whose root may be a ranking operator."""
        if isinstance(node, Rerank):
            return self.rerank(node, self.ranked(node.child))
        if isinstance(node, Fuse):
            scores = self.plain(node.child)
            everywhere = bm25_reference(self.docs, self.query_text, self.bm25)
            text = {d: everywhere[d] for d in scores}
            if node.bm25 is not None:
                return self.linear(text, scores, node.bm25)
            return self.rrf(text, scores, node.rrf)
        return self.plain(node)

    def rerank(self, node: Rerank, first: dict[int, float | None]) -> dict[int, float | None]:
        order = sorted(first, key=lambda d: (first[d] is None, -(first[d] or 0.0), d))
        if len(order) > node.n:
            last, after = first[order[node.n - 1]], first[order[node.n]]
            if last is not None and after is not None and 0 < last - after < EPSILON:
                self.ambiguous = True
        doc_ids, scores = self.scores(node.key)
        cos = dict(zip(doc_ids.tolist(), scores.tolist(), strict=True))
        return {d: cos.get(d) for d in order[: node.n]}

    @staticmethod
    def linear(
        text: dict[int, float], scores: dict[int, float | None], weight: float
    ) -> dict[int, float | None]:
        best = max(text.values(), default=0.0)
        return {
            d: (weight * text[d] / best if best > 0 else 0.0) + (1 - weight) * (scores[d] or 0.0)
            for d in scores
        }

    def rrf(self, text: dict[int, float], scores: dict[int, float | None], k: int) -> dict[int, float | None]:
        fused: dict[int, float | None] = dict.fromkeys(scores, 0.0)
        rankings = (
            {d: v for d, v in text.items() if v > 0},
            {d: v for d, v in scores.items() if v is not None},
        )
        for values in rankings:
            order = sorted(values, key=lambda d: (-values[d], d))
            for rank, d in enumerate(order, 1):
                fused[d] += 1 / (k + rank)
                near = rank < len(order) and 0 < values[d] - values[order[rank]] < EPSILON
                if near and 1 / (k + rank) - 1 / (k + rank + 1) >= EPSILON / 2:
                    self.ambiguous = True
        return fused

    def plain(self, node: Node) -> dict[int, float | None]:
        """doc id -> score of the matches of a plain expression (best over its nn keys and the payloads of its
        `:score` terms)."""
        matches = self.eval(node)
        scores: dict[int, float | None] = dict.fromkeys(matches)
        for key in sorted({n.key for n in nn_nodes(node)}):
            doc_ids, key_scores = self.scores(key)
            for d, s in zip(doc_ids.tolist(), key_scores.tolist(), strict=True):
                if d in scores:
                    best = scores[d]
                    scores[d] = s if best is None else max(best, s)
        for term in scored_terms(node):
            for d in matches:
                payload = self.docs[d].get(term)
                if payload is not None:
                    best, value = scores[d], float(np.float32(payload))
                    scores[d] = value if best is None else max(best, value)
        return scores

    def eval(self, node: Node) -> set[int]:
        if isinstance(node, Term):
            held = {
                d
                for d, terms in self.docs.items()
                if node.term in terms and _in_bounds(terms[node.term], node)
            }
            return held if node.bounded else held | self.cluster_term(node.term)
        if isinstance(node, And):
            out = set(self.all)
            for child in node.children:
                out &= self.eval(child)
            return out
        if isinstance(node, Or):
            out: set[int] = set()
            for child in node.children:
                out |= self.eval(child)
            return out
        if isinstance(node, Not):
            return self.all - self.eval(node.child)
        if isinstance(node, NN):
            return self.nn(node)
        raise TypeError(f"cannot evaluate {node!r}")

    def cluster_term(self, term: str) -> set[int]:
        fieldname, _, value = term.partition(":")
        key = fieldname[len(CLUSTER_FIELD_PREFIX) :]
        views = [v for k, v in self.keys.items() if k.casefold() == key]
        if not fieldname.startswith(CLUSTER_FIELD_PREFIX) or not views or not value.isdigit():
            return set()
        view = views[0]
        return {int(d) for d in view.doc_ids[view.lists == int(value)]} & self.all

    def scores(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        view = self.keys[key]
        return view.doc_ids, view.decoded @ view.query(self.vectors[key])

    def nn(self, node: NN) -> set[int]:
        view = self.keys[node.key]
        centroid_scores = view.centroids @ view.query(self.vectors[node.key])
        nprobe = min(node.nprobe, len(centroid_scores))
        ranked = np.sort(centroid_scores)[::-1]
        if nprobe < len(ranked) and ranked[nprobe - 1] - ranked[nprobe] < EPSILON:
            self.ambiguous = True
        probed = np.argsort(-centroid_scores, kind="stable")[:nprobe]
        doc_ids, scores = self.scores(node.key)
        in_lists = np.isin(view.lists, probed)
        doc_ids, scores = doc_ids[in_lists], scores[in_lists]
        if node.radius is not None:
            threshold = 1.0 - node.radius
            if np.any(np.abs(scores - threshold) < EPSILON):
                self.ambiguous = True
            return {int(d) for d in doc_ids[scores >= threshold]}
        ranking = np.argsort(-scores, kind="stable")
        if len(ranking) > node.k and scores[ranking[node.k - 1]] - scores[ranking[node.k]] < EPSILON:
            self.ambiguous = True
        return {int(d) for d in doc_ids[ranking[: node.k]]}


def evaluate(
    root: Node,
    docs: Docs,
    keys: Mapping[str, QuantisedKey],
    vectors: Mapping[str, np.ndarray],
    query_text: str | None = None,
    bm25: BM25Params | None = None,
) -> ReferenceResult:
    """The results of `root` with their scores: those of its ranking operators, or the best over its nn keys
    and the payloads of its `:score` terms."""
    evaluator = _Evaluator(docs, keys, vectors, query_text, bm25 or engine_defaults().bm25)
    return ReferenceResult(evaluator.ranked(root), evaluator.ambiguous)
