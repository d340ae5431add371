"""Planning and evaluation of a parsed expression over an index (its read side, IndexReader).

Every node is evaluated against the set of documents still allowed by its context: `eval(node, allowed)`
returns node ∩ allowed, so an (and) hands each child the intersection of the children before it. The planner
orders an (and)'s children: plain term-like children first, most selective first (posting sizes), then (not)
children, then children holding an (nn), so an nn scans only what the other branches allow.

(nn KEY :radius r :nprobe p) is the OR of the p cluster terms nearest the query embedding, each candidate's
PQ payload checked against the radius. Three plans give the same set; a cost model (`PlannerCosts`, in units
of one code scanned; conf/engine/default.yaml `planner`) picks the cheapest for the allowed set A:
  scan        faiss scans the p inverted lists, hits are intersected with A afterwards;
  selector    faiss scans the p lists with A pushed in as an id selector (only members are scored);
  candidates  the members of A whose cluster is among the p are decoded and scored directly (a
              term-driven plan: the cost follows |A|, not the size of the lists).
(nn KEY :k K :nprobe p) takes the K best of those lists first and only then meets the rest of the
expression (the paper's top-K mode), so it always scans.

A term with `:min`/`:max` keeps the postings whose payload lies within the bounds (float32, inclusive).

Scores: a result's score is the best of its scores under the expression's scoring operators: for each nn key,
the quantised cosine similarity between that key's query embedding and the document's code (from the scan
when the nn matched it, decoded otherwise); for each term marked `:score`, the document's payload of that
term. NaN when there is none (no scoring operator, or no embedding and no such payload).

Ranking operators, at the root of the query (innermost first), re-score the results of their child:
  (fuse :bm25 W e) / (fuse :rrf K e)  the results of e, scored by a fusion of their BM25 for the query text
                                      and their score under e (ebr/retrieval/scoring.py);
  (rerank KEY :n N e)                 the best N results of e (by e's score, ties by doc id), scored by
                                      KEY's quantised cosine (NaN: no embedding under KEY).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import faiss
import numpy as np

from ebr.config import BM25Params, PlannerCosts, engine_defaults
from ebr.retrieval.quantized import NNField, Probe
from ebr.retrieval.query import (
    NN,
    And,
    AnyText,
    Fuse,
    Node,
    Not,
    Or,
    Rerank,
    Term,
    Text,
    children,
    nn_nodes,
    scored_terms,
    vector_nodes,
)
from ebr.retrieval.reader import IndexReader
from ebr.retrieval.scoring import bm25_scores, fuse_linear, fuse_rrf

ORDERS = ("score", "doc_id")
_EMPTY = np.empty(0, dtype=np.int64)


class QueryTimeoutError(TimeoutError):
    """The query ran past its deadline."""


class ExecutionError(ValueError):
    """An expression that is valid syntax but cannot run on this index (unknown key, missing vector)."""

    def __init__(self, position: int, problem: str):
        super().__init__(f"column {position + 1}: {problem}")
        self.position = position
        self.problem = problem


PLANS = ("scan", "selector", "candidates")


@dataclass
class NNStats:
    key: str
    mode: str
    nprobe: int
    codes_estimate: int  # codes in nprobe average clusters (the planner's view of the scan)
    allowed: int | None
    plan: str
    matches: int


@dataclass
class RankingStats:
    operator: str  # fuse | rerank
    method: str  # fuse: bm25 | rrf; rerank: the embedding key that re-scores
    parameter: float  # fuse: W or K; rerank: N
    ranked: int  # results it received
    kept: int  # results it passed on


@dataclass
class Hits:
    """Results in order: doc ids and scores (NaN: no score), plus how the query ran."""

    doc_ids: np.ndarray
    scores: np.ndarray
    total: int  # matches before the limit
    nn: list[NNStats] = field(default_factory=list)
    ranking: list[RankingStats] = field(default_factory=list)  # the ranking operators, innermost first

    def as_dicts(self) -> list[dict[str, float | int | None]]:
        return [
            {"doc_id": int(d), "score": None if np.isnan(s) else float(s)}
            for d, s in zip(self.doc_ids, self.scores, strict=True)
        ]


def check_executable(index: IndexReader, root: Node) -> list[NN | Rerank]:
    """The operators of `root` that need a query embedding (nn, rerank); ExecutionError for an unknown key
    or an unexpanded $text / $anytext."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, (Text, AnyText)):
            raise ExecutionError(node.pos, f"{node} is only allowed when the query text is expanded")
        stack.extend(children(node))
    found = vector_nodes(root)
    for node in found:
        if node.key not in index.fields:
            known = ", ".join(sorted(index.fields)) or "none"
            raise ExecutionError(node.pos, f"unknown embedding key {node.key!r} (this index has: {known})")
    return found


def execute(
    index: IndexReader,
    root: Node,
    vectors: Mapping[str, np.ndarray],
    *,
    limit: int | None = None,
    order: str = "score",
    deadline: float | None = None,
    costs: PlannerCosts | None = None,
    query_text: str | None = None,
    bm25: BM25Params | None = None,
) -> Hits:
    """Evaluate `root`; `vectors` holds a unit query vector per nn and rerank key; `query_text` is what
    `(fuse ...)` scores by BM25; `deadline` is a time.monotonic()."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    for node in check_executable(index, root):
        if node.key not in vectors:
            kind = "nn" if isinstance(node, NN) else "rerank"
            raise ExecutionError(node.pos, f"no query embedding for {kind} key {node.key!r}")
    defaults = engine_defaults()
    run = _Run(index, vectors, deadline, costs or defaults.planner, query_text, bm25 or defaults.bm25)
    ids, scores = run.ranked(root)
    doc_ids = index.doc_ids[ids]
    ranking = _rank(doc_ids, scores, order, limit)
    return Hits(doc_ids[ranking], scores[ranking], total=len(ids), nn=run.stats, ranking=run.ranking)


def match_mask(
    index: IndexReader, root: Node, doc_ids: np.ndarray, vectors: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """Boolean mask: which of `doc_ids` match `root` as a set (its ranking operators at the root re-score
    and are ignored), evaluated within those documents only (the cost follows len(doc_ids) and the postings
    met, never the whole index); documents not live never match."""
    while isinstance(root, (Fuse, Rerank)):
        root = root.child
    wanted = np.asarray(doc_ids, dtype=np.int64)
    internal = np.array([-1 if (i := index.internal_id(int(d))) is None else i for d in wanted], np.int64)
    allowed = np.unique(internal[internal >= 0])
    if len(allowed) == 0:
        return np.zeros(len(wanted), dtype=bool)
    run = _Run(index, vectors or {}, None, engine_defaults().planner, None, engine_defaults().bm25)
    matched = run.eval(root, allowed)
    return (internal >= 0) & member_mask(internal, matched)


def _rank(doc_ids: np.ndarray, scores: np.ndarray, order: str, limit: int | None) -> np.ndarray:
    """Positions of the results in order, cut to `limit`: best score first (NaN last), ties by doc id."""
    if order == "doc_id":
        return np.argsort(doc_ids, kind="stable")[:limit]
    if len(scores) < 2 or (scores[:-1] > scores[1:]).all():  # strictly best first already (a top-K scan)
        return np.arange(len(scores))[:limit]
    keys = -scores
    chosen = None
    if limit is not None and limit < len(keys):
        kth = np.partition(keys, limit - 1)[limit - 1]
        if not math.isnan(kth):
            chosen = np.flatnonzero(keys <= kth)  # the best `limit`, and every tie of the last one
            keys, doc_ids = keys[chosen], doc_ids[chosen]
    ranking = keys.argsort()
    ranked = keys[ranking]
    if len(ranked) > 1 and (math.isnan(ranked[-1]) or (ranked[1:] == ranked[:-1]).any()):
        ranking = np.lexsort((doc_ids, keys))  # ties (or NaN) are ordered by doc id
    return (ranking if chosen is None else chosen[ranking])[:limit]


class _Run:
    """State of one evaluation: scores per key, selectors kept alive, statistics."""

    def __init__(
        self,
        index: IndexReader,
        vectors: Mapping[str, np.ndarray],
        deadline: float | None,
        costs: PlannerCosts,
        query_text: str | None,
        bm25: BM25Params,
    ):
        self.index = index
        self.vectors = vectors
        self.deadline = deadline
        self.costs = costs
        self.query_text = query_text
        self.bm25 = bm25
        self.scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.stats: list[NNStats] = []
        self.ranking: list[RankingStats] = []
        self._keepalive: list[object] = []

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise QueryTimeoutError("the query ran past its deadline")

    def ranked(self, node: Node, decoded: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (live, in no order) and scores of a query whose root may be a ranking operator.

        Ranking operators rank by nn scores `decoded` from the codes, so that documents with the same code
        tie exactly whatever the plan (a scanned score may differ from the decoded one in the last bits)."""
        if isinstance(node, Rerank):
            return self.rerank(node, *self.ranked(node.child, decoded=True))
        if isinstance(node, Fuse):
            return self.fuse(node, *self.results(node.child, decoded=True))
        return self.results(node, decoded)

    def rerank(self, node: Rerank, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best `node.n` of the results (ties by doc id), scored by the key's quantised cosine, decoded
        from their codes (identical codes: identical scores)."""
        self.check_deadline()
        top = ids[_rank(self.index.doc_ids[ids], scores, "score", node.n)]
        self.ranking.append(RankingStats("rerank", node.key, node.n, len(ids), len(top)))
        return top, self.decoded_scores(node.key, top)

    def fuse(self, node: Fuse, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The results scored by the fusion of their BM25 and their scores."""
        self.check_deadline()
        text = bm25_scores(self.index, ids, self.query_text, self.bm25)
        if node.bm25 is not None:
            fused = fuse_linear(text, scores, node.bm25)
        else:
            fused = fuse_rrf(self.index.doc_ids[ids], text, scores, node.rrf)
        parameter = node.bm25 if node.bm25 is not None else node.rrf
        self.ranking.append(RankingStats("fuse", node.method, parameter, len(ids), len(ids)))
        return ids, fused

    def results(self, node: Node, decoded: bool) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (live, in no order) and scores of a plain expression (nn scores `decoded` from the
        codes, or from the scans where scanned)."""
        if isinstance(node, NN) and not decoded:  # a lone nn needs no set algebra: hits straight from faiss
            return self.nn_hits(node, None)
        ids = self.eval(node, None)
        if self.index.dead_count and len(ids):
            ids = ids[self.index.live_mask[ids]]
        key_scores = self.decoded_scores if decoded else self.key_scores
        keys = sorted({n.key for n in nn_nodes(node)})
        return ids, self.final_scores(ids, keys, scored_terms(node), key_scores)

    def eval(self, node: Node, allowed: np.ndarray | None) -> np.ndarray:
        """Sorted internal ids of node ∩ allowed (allowed None: no restriction)."""
        self.check_deadline()
        if isinstance(node, Term):
            ids = self.index.posting(node.term)
            if node.bounded:
                ids = ids[in_bounds(self.index.posting_payloads(node.term), node.low, node.high)]
            return _intersect(ids, allowed)
        if isinstance(node, And):
            current = allowed
            for child in self.plan(node):
                current = self.eval(child, current)
                if len(current) == 0:
                    return _EMPTY
            return self.index.universe() if current is None else current
        if isinstance(node, Or):
            parts = [self.eval(child, allowed) for child in node.children]
            return np.unique(np.concatenate(parts)) if parts else _EMPTY
        if isinstance(node, Not):
            inner = self.eval(node.child, allowed)
            base = self.index.universe() if allowed is None else allowed
            return base[~member_mask(base, inner)]
        if isinstance(node, NN):
            return self.nn(node, allowed)
        raise TypeError(f"cannot evaluate {node!r}")

    def plan(self, node: And) -> list[Node]:
        """Children in evaluation order: selective plain children, then (not), then those holding an nn."""
        return sorted(
            node.children,
            key=lambda c: (bool(nn_nodes(c)), isinstance(c, Not), self.estimate(c)),
        )

    def estimate(self, node: Node) -> int:
        """An upper bound of the node's result size (cheap: posting sizes only)."""
        if isinstance(node, Term):
            return self.index.posting_size(node.term)
        if isinstance(node, And):
            return min((self.estimate(c) for c in node.children), default=self.index.live_count)
        if isinstance(node, Or):
            return min(sum(self.estimate(c) for c in node.children), self.index.live_count)
        if isinstance(node, NN) and node.k is not None:
            return node.k
        return self.index.live_count

    def nn(self, node: NN, allowed: np.ndarray | None) -> np.ndarray:
        """Sorted internal ids of nn ∩ allowed; the scores are kept for the final scoring."""
        ids, scores = self.nn_hits(node, allowed)
        by_id = np.argsort(ids)
        ids, scores = ids[by_id], scores[by_id]
        self.scored.setdefault(node.key, []).append((ids, scores))
        return ids

    def nn_hits(self, node: NN, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Ids (in no order) and scores of nn ∩ allowed, by the plan the costs favour."""
        nn_field = self.index.fields[node.key]
        if allowed is not None and len(allowed) == 0:
            return _EMPTY, np.empty(0, dtype=np.float32)
        vector = self.vectors[node.key]
        codes = nn_field.expected_codes(node.nprobe)
        if node.k is not None:
            plan = "scan"
            ids, scores = nn_field.scan_top_k(vector, node.nprobe, node.k)
        else:
            plan = "scan" if allowed is None else self.choose_plan(codes, len(allowed), node.radius, nn_field)
            min_score = 1.0 - node.radius
            if plan == "candidates":
                probe = nn_field.probe(vector, node.nprobe)
                ids, scores = self.candidates(nn_field, probe, allowed, min_score)
            else:
                selector = self.selector(allowed) if plan == "selector" else None
                ids, scores = nn_field.scan_radius(vector, node.nprobe, min_score, selector)
        if allowed is not None and plan == "scan":
            keep = member_mask(ids, allowed)
            ids, scores = ids[keep], scores[keep]
        mode = "radius" if node.k is None else "top-k"
        allowed_count = None if allowed is None else len(allowed)
        self.stats.append(NNStats(node.key, mode, node.nprobe, round(codes), allowed_count, plan, len(ids)))
        return ids, scores

    def choose_plan(self, codes: float, allowed: int, radius: float, nn_field: NNField) -> str:
        """The cheapest radius-mode plan for about `codes` codes in the probed lists and `allowed` ids."""
        c = self.costs
        passing = 1.0 if radius >= 1.0 else c.pass_fraction
        members = allowed * codes / max(nn_field.ntotal, 1)  # allowed ids expected in the probed lists
        cost = {
            "scan": codes * (1 + passing * c.scan_result),
            "selector": codes * c.selector_check
            + self.selector_cost(allowed)
            + members * (1 + passing * c.scan_result),
            "candidates": allowed * c.candidate_per_allowed + members * c.candidate_per_hit,
        }
        return min(PLANS, key=cost.__getitem__)

    def selector_cost(self, allowed: int) -> float:
        return min(
            allowed * self.costs.hash_per_allowed, self.index.internal_count * self.costs.bitmap_per_id
        )

    def candidates(
        self, nn_field: NNField, probe: Probe, allowed: np.ndarray, min_score: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Allowed documents in the probed clusters, scored from their codes, kept when >= min_score."""
        clusters = nn_field.clusters_of(allowed)
        probed = np.zeros(nn_field.nlist + 1, dtype=bool)  # the last slot stands for "no embedding" (-1)
        probed[probe.lists[probe.lists >= 0]] = True
        hits = allowed[probed[clusters]]
        scores = nn_field.score(probe.query, hits)
        keep = scores >= np.float32(min_score)
        return hits[keep], scores[keep]

    def selector(self, allowed: np.ndarray) -> faiss.IDSelector:
        """A faiss id selector over `allowed`: a hash set or a bitmap of all internal ids, the cheaper one."""
        c = self.costs
        if len(allowed) * c.hash_per_allowed <= self.index.internal_count * c.bitmap_per_id:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            sel = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        else:
            bits = np.zeros(self.index.internal_count, dtype=bool)
            bits[allowed] = True
            bitmap = np.packbits(bits, bitorder="little")
            self._keepalive.append(bitmap)
            sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        self._keepalive.append(sel)
        return sel

    def final_scores(
        self,
        ids: np.ndarray,
        keys: list[str],
        terms: list[str],
        key_scores: Callable[[str, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """The best score of each result over the nn keys (`key_scores`) and the payloads of the `:score`
        terms."""
        if len(keys) == 1 and not terms:
            return key_scores(keys[0], ids)
        scores = np.full(len(ids), np.nan, dtype=np.float32)
        for key in keys:
            scores = np.fmax(scores, key_scores(key, ids))
        for term in terms:
            scores = np.fmax(scores, self.index.term_payloads(term, ids))
        return scores

    def key_scores(self, key: str, ids: np.ndarray) -> np.ndarray:
        """Scores of `ids` under `key`: from the scans where they were scanned, decoded otherwise."""
        parts = self.scored.get(key, [])
        if len(parts) == 1 and parts[0][0] is ids:  # the result is one nn's own hits
            return parts[0][1]
        out = np.full(len(ids), np.nan, dtype=np.float32)
        if len(parts) == 1:
            seen, seen_scores = parts[0]
        elif parts:
            seen, first = np.unique(np.concatenate([p[0] for p in parts]), return_index=True)
            seen_scores = np.concatenate([p[1] for p in parts])[first]
        if parts and len(seen):
            pos = np.minimum(np.searchsorted(seen, ids), len(seen) - 1)
            hit = seen[pos] == ids
            out[hit] = seen_scores[pos[hit]]
        missing = np.isnan(out)
        if missing.any():
            out[missing] = self.decoded_scores(key, ids[missing])
        return out

    def decoded_scores(self, key: str, ids: np.ndarray) -> np.ndarray:
        """Scores of `ids` under `key` decoded from their codes (NaN: no embedding under the key)."""
        nn_field = self.index.fields[key]
        out = np.full(len(ids), np.nan, dtype=np.float32)
        present = nn_field.clusters_of(ids) >= 0
        if present.any():
            out[present] = nn_field.score(nn_field.to_ivf_space(self.vectors[key]), ids[present])
        return out


def in_bounds(payloads: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """Boolean mask: which float32 `payloads` lie within [low, high] (bounds as float32; NaN: never)."""
    mask = ~np.isnan(payloads)
    if low is not None:
        mask &= payloads >= np.float32(low)
    if high is not None:
        mask &= payloads <= np.float32(high)
    return mask


def member_mask(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `values` are in the sorted array `sorted_set`."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.searchsorted(sorted_set, values)
    return sorted_set[np.minimum(pos, len(sorted_set) - 1)] == values


def _intersect(values: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Sorted `values` ∩ sorted `allowed` (None: everything), probing the larger with the smaller."""
    if allowed is None:
        return values
    if len(values) > len(allowed):
        values, allowed = allowed, values
    return values[member_mask(values, allowed)]
