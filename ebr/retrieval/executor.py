"""Planning and evaluation of a parsed expression over an EngineIndex.

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
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import faiss
import numpy as np

from ebr.retrieval.index import EngineIndex
from ebr.retrieval.quantized import NNField, Probe
from ebr.retrieval.query import NN, And, Node, Not, Or, Term, Text, nn_nodes, scored_terms

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


@dataclass(frozen=True)
class PlannerCosts:
    """Unit costs of the nn plans, relative to faiss scanning one PQ code (benchmarks/engine_plans.py)."""

    scan_result: float = 12.0  # collecting one hit of a scan (range result, sort by id, intersection)
    pass_fraction: float = 0.05  # expected share of scanned codes within a radius < 1 (>= 1: all of them)
    selector_check: float = 0.42  # testing one code's id against a selector
    hash_per_allowed: float = 8.0  # building a hash-set selector, per allowed id
    bitmap_per_id: float = 0.01  # building a bitmap selector, per internal id of the index
    candidate_per_allowed: float = 0.75  # looking up one allowed id's cluster
    candidate_per_hit: float = 130.0  # decoding and scoring one allowed id of a probed cluster


PLANS = ("scan", "selector", "candidates")
DEFAULT_COSTS = PlannerCosts()


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
class Hits:
    """Results in order: doc ids and scores (NaN: no nn score), plus how the query ran."""

    doc_ids: np.ndarray
    scores: np.ndarray
    total: int  # matches before the limit
    nn: list[NNStats] = field(default_factory=list)

    def as_dicts(self) -> list[dict[str, float | int | None]]:
        return [
            {"doc_id": int(d), "score": None if np.isnan(s) else float(s)}
            for d, s in zip(self.doc_ids, self.scores, strict=True)
        ]


def check_executable(index: EngineIndex, root: Node) -> list[NN]:
    """The nn operators of `root`; ExecutionError for an unknown key or an unexpanded $text."""
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        if isinstance(node, Text):
            raise ExecutionError(node.pos, "$text is only allowed when the query text is expanded")
        if isinstance(node, NN):
            if node.key not in index.fields:
                known = ", ".join(sorted(index.fields)) or "none"
                raise ExecutionError(
                    node.pos, f"unknown embedding key {node.key!r} (this index has: {known})"
                )
            found.append(node)
        elif isinstance(node, (And, Or)):
            stack.extend(node.children)
        elif isinstance(node, Not):
            stack.append(node.child)
    return found


def execute(
    index: EngineIndex,
    root: Node,
    vectors: Mapping[str, np.ndarray],
    *,
    limit: int | None = None,
    order: str = "score",
    deadline: float | None = None,
    costs: PlannerCosts = DEFAULT_COSTS,
) -> Hits:
    """Evaluate `root`; `vectors` holds a unit query vector per nn key; `deadline` is a time.monotonic()."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    nodes = check_executable(index, root)
    for node in nodes:
        if node.key not in vectors:
            raise ExecutionError(node.pos, f"no query embedding for nn key {node.key!r}")
    run = _Run(index, vectors, deadline, costs)
    if isinstance(root, NN):  # a lone nn needs no set algebra: its hits come straight from faiss
        ids, scores = run.nn_hits(root, None)
    else:
        ids = run.eval(root, None)
        if index.dead_count and len(ids):
            ids = ids[index.live_mask[ids]]
        scores = run.final_scores(ids, sorted({n.key for n in nodes}), scored_terms(root))
    doc_ids = index.doc_ids[ids]
    ranking = _rank(doc_ids, scores, order, limit)
    return Hits(doc_ids[ranking], scores[ranking], total=len(ids), nn=run.stats)


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
        index: EngineIndex,
        vectors: Mapping[str, np.ndarray],
        deadline: float | None,
        costs: PlannerCosts,
    ):
        self.index = index
        self.vectors = vectors
        self.deadline = deadline
        self.costs = costs
        self.scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.stats: list[NNStats] = []
        self._keepalive: list[object] = []

    def eval(self, node: Node, allowed: np.ndarray | None) -> np.ndarray:
        """Sorted internal ids of node ∩ allowed (allowed None: no restriction)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise QueryTimeoutError("the query ran past its deadline")
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

    def final_scores(self, ids: np.ndarray, keys: list[str], terms: list[str]) -> np.ndarray:
        """The best score of each result over the nn keys and the payloads of the `:score` terms."""
        if len(keys) == 1 and not terms:
            return self.key_scores(keys[0], ids, self.index.fields[keys[0]])
        scores = np.full(len(ids), np.nan, dtype=np.float32)
        for key in keys:
            scores = np.fmax(scores, self.key_scores(key, ids, self.index.fields[key]))
        for term in terms:
            scores = np.fmax(scores, self.index.term_payloads(term, ids))
        return scores

    def key_scores(self, key: str, ids: np.ndarray, nn_field: NNField) -> np.ndarray:
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
        missing = ids[np.isnan(out)]
        if len(missing):
            present = nn_field.clusters_of(missing) >= 0
            if present.any():
                query = nn_field.to_ivf_space(self.vectors[key])
                out[np.flatnonzero(np.isnan(out))[present]] = nn_field.score(query, missing[present])
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
