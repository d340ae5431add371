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

The set A of an (and)'s nn-free children is kept across queries, with the selector, search parameters and
member clusters built from it (ebr/retrieval/filter_cache.py; invalidated by any change of the index). When
only the best `limit` results by one radius-mode nn's score are returned, that nn runs as a faiss top-K with
A as its selector and the radius as a post-filter (the top-K push-down, see `execute`): the same results.

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

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import faiss
import numpy as np

from ebr.config import BM25Params, PlannerCosts, engine_defaults
from ebr.retrieval.filter_cache import FilterCache, FilterEntry, shared_cache
from ebr.retrieval.quantized import NNField, Probe, SearchParams
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
    matches: int  # hits found (top_k set: of the best top_k, those within the radius)
    top_k: int | None  # push-down: faiss was asked for the best top_k of the allowed documents (None: all)
    complete: bool  # every match was found and counted (False: `matches` is a lower bound)


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
    total: int  # matches before the limit; a lower bound (> the limit) when `total_exact` is False
    nn: list[NNStats] = field(default_factory=list)
    ranking: list[RankingStats] = field(default_factory=list)  # the ranking operators, innermost first

    @property
    def total_exact(self) -> bool:
        """False when the top-K push-down stopped before every match was counted (see execute)."""
        return all(s.complete for s in self.nn)

    def as_dicts(self) -> list[dict[str, float | int | None]]:
        return [
            {"doc_id": int(d), "score": None if np.isnan(s) else float(s)}
            for d, s in zip(self.doc_ids, self.scores, strict=True)
        ]


def check_executable(index: IndexReader, root: Node) -> list[NN | Rerank]:
    """The operators of `root` that need a query embedding (nn, rerank); ExecutionError for an unknown key
    or an unexpanded $text / $anytext."""
    found = _prepared(root)[0]
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
    `(fuse ...)` scores by BM25; `deadline` is a time.monotonic().

    Top-K push-down: when the results are ordered by score and cut to `limit`, and the expression is one
    radius-mode nn, alone or in an (and) whose other children hold no nn, with no `:score` term and no ranking
    operator (the result's score is that nn's), faiss is asked for the best `limit + 1` of the allowed
    documents of the probed lists (more on a tie at the limit) and the radius applied to those: the same
    results, scores and order as the full evaluation. `Hits.total` then counts the matches found, a lower
    bound (`total_exact` False) when all of them were within the radius."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    needs_vectors, shape = _prepared(root)
    for node in needs_vectors:
        if node.key not in vectors or node.key not in index.fields:
            check_executable(index, root)  # an unknown key: its error
            kind = "nn" if isinstance(node, NN) else "rerank"
            raise ExecutionError(node.pos, f"no query embedding for {kind} key {node.key!r}")
    defaults = engine_defaults()
    costs = costs or defaults.planner
    cache = shared_cache(costs.filter_cache_bytes)
    run = _Run(index, vectors, deadline, costs, query_text, bm25 or defaults.bm25, cache)
    if order == "score" and limit is not None and shape is not None:
        doc_ids, scores, total = run.top(shape, limit)
        return Hits(doc_ids, scores, total=total, nn=run.stats, ranking=run.ranking)
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
    run = _Run(index, vectors or {}, None, engine_defaults().planner, None, engine_defaults().bm25, None)
    matched = run.eval(root, allowed)
    return (internal >= 0) & member_mask(internal, matched)


Shape = tuple[NN, tuple[Node, ...], tuple[str, ...]]  # push-down: the nn, the other children, their key
_PREPARED: dict[int, tuple[Node, tuple[list[NN | Rerank], Shape | None]]] = {}  # id(root) -> root, facts
_MEMO_SIZE = 4096
_SMALL_SORT = 64  # results up to which the push-down orders them in Python


def _prepared(root: Node) -> tuple[list[NN | Rerank], Shape | None]:
    """The operators of `root` that need a query vector, and its push-down shape; memoised per expression
    object (parse_cached hands out the same ones again), the root kept so that its id is not reused."""
    memo = _PREPARED.get(id(root))
    if memo is not None and memo[0] is root:
        return memo[1]
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, (Text, AnyText)):
            raise ExecutionError(node.pos, f"{node} is only allowed when the query text is expanded")
        stack.extend(children(node))
    value = (vector_nodes(root), push_down_shape(root))
    if len(_PREPARED) >= _MEMO_SIZE:
        _PREPARED.clear()
    _PREPARED[id(root)] = (root, value)
    return value


def push_down_shape(root: Node) -> Shape | None:
    """(the nn, the other children, their filter key) when the top-K push-down applies to `root` (see
    execute), else None."""
    if isinstance(root, NN):
        return (root, (), ()) if root.k is None else None
    if isinstance(root, And) and not scored_terms(root):
        nns = [c for c in root.children if nn_nodes(c)]
        if len(nns) == 1 and isinstance(nns[0], NN) and nns[0].k is None:
            filters = tuple(c for c in root.children if c is not nns[0])
            return nns[0], filters, filter_key(filters)
    return None


def filter_key(filters: tuple[Node, ...]) -> tuple[str, ...]:
    """The filter cache's key of nn-free children: their expressions, sorted (an (and) of them)."""
    return tuple(sorted(str(f) for f in filters))


@functools.lru_cache(maxsize=1024)
def _min_score(radius: float) -> float:
    """The least score within `radius` as the float32 the scores are compared with (kept: score >= it)."""
    return float(np.float32(1.0 - radius))


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

    __slots__ = (
        "index",
        "vectors",
        "deadline",
        "costs",
        "query_text",
        "bm25",
        "cache",
        "scored",
        "stats",
        "ranking",
        "_keepalive",
        "_entries",
    )

    def __init__(
        self,
        index: IndexReader,
        vectors: Mapping[str, np.ndarray],
        deadline: float | None,
        costs: PlannerCosts,
        query_text: str | None,
        bm25: BM25Params,
        cache: FilterCache | None,
    ):
        self.index = index
        self.vectors = vectors
        self.deadline = deadline
        self.costs = costs
        self.query_text = query_text
        self.bm25 = bm25
        self.cache = cache
        self.scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.stats: list[NNStats] = []
        self.ranking: list[RankingStats] = []
        self._keepalive: list[object] = []
        self._entries: dict[int, FilterEntry] = {}  # id(allowed ids) -> the filter entry holding them

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
            current, order = allowed, self.plan(node)
            if allowed is None:  # the nn-free children first: their set may be cached, with its selector
                filters = 0
                while filters < len(order) and not nn_nodes(order[filters]):
                    filters += 1
                if 0 < filters < len(order):
                    prefix = tuple(order[:filters])
                    current, order = self.filter_entry(prefix, filter_key(prefix)).ids, order[filters:]
                    if len(current) == 0:
                        return _EMPTY
            for child in order:
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

    def filter_entry(
        self, filters: tuple[Node, ...], key: tuple[str, ...], ordered: bool = True
    ) -> FilterEntry:
        """The documents the nn-free `filters` all match, from the cache (by `key`, their `filter_key`) when
        held; evaluated in their order (`ordered`) or in the planner's."""

        def build() -> np.ndarray:
            current = None
            for child in filters if ordered else self._filter_order(filters):
                current = self.eval(child, current)
                if len(current) == 0:
                    break
            return current

        entry = FilterEntry(build()) if self.cache is None else self.cache.get(self.index, key, build)
        self._entries[id(entry.ids)] = entry
        return entry

    def top(self, shape: Shape, limit: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Doc ids and scores of the best `limit` results in order, and the total, by the top-K push-down
        (see execute) of an expression of that `shape`."""
        nn, filters, key = shape
        if self.deadline is not None:
            self.check_deadline()
        nn_field = self.index.fields[nn.key]
        entry, params = None, None
        if filters:
            entry = self.filter_entry(filters, key, ordered=len(filters) == 1)
            if len(entry.ids) == 0:
                return _EMPTY, np.empty(0, dtype=np.float32), 0
            plan, params, codes = entry.plan(nn.key, nn.nprobe, self.costs, lambda: self.top_plan(entry, nn))
        else:
            plan, codes = "scan", nn_field.expected_codes(nn.nprobe)
        vector = self.vectors[nn.key]
        min_score = _min_score(nn.radius)
        asked = None
        if plan == "candidates":
            probe = nn_field.probe(vector, nn.nprobe)
            ids, scores = self.candidates(nn_field, probe, entry.ids, min_score, entry)
            complete, best_first = True, False
        else:  # scores come best first: compared as Python floats (exact float32 values), few numpy calls
            asked = limit + 1
            while True:  # until the limit-th score is followed by a lower one, or every candidate is in
                ids, scores = nn_field.scan_top_k(vector, nn.nprobe, asked, params)
                found = scores.tolist()
                if len(found) < asked or found[-1] < min_score or found[-1] < found[limit - 1]:
                    break
                asked *= 4
            complete = len(found) < asked or found[-1] < min_score
            if found and found[-1] < min_score:  # the radius cuts a tail off
                cut = next(i for i, score in enumerate(found) if score < min_score)
                ids, scores, found = ids[:cut], scores[:cut], found[:cut]
            head = found[: limit + 1]
            best_first = len(set(head)) == len(head)  # sorted, no two equal: no tie deciding the order
        allowed = None if entry is None else len(entry.ids)
        stats = NNStats(nn.key, "radius", nn.nprobe, round(codes), allowed, plan, len(ids), asked, complete)
        self.stats.append(stats)
        doc_ids = self.index.doc_ids[ids]
        if best_first:
            return doc_ids[:limit], scores[:limit], len(ids)
        if len(ids) <= _SMALL_SORT:  # a few hits: one Python sort beats numpy's calls (exact float32 keys)
            ranked = sorted(
                zip([-x for x in scores.tolist()], doc_ids.tolist(), range(len(ids)), strict=True)
            )
            ranking = np.array([row[2] for row in ranked[:limit]], dtype=np.int64)
        else:
            ranking = _rank(doc_ids, scores, "score", limit)  # ties by doc id (or the candidates' order)
        return doc_ids[ranking], scores[ranking], len(ids)

    def _filter_order(self, filters: tuple[Node, ...]) -> tuple[Node, ...]:
        """nn-free children in the order `plan` evaluates them."""
        return tuple(sorted(filters, key=lambda c: (isinstance(c, Not), self.estimate(c))))

    def top_plan(self, entry: FilterEntry, nn: NN) -> tuple[str, SearchParams | None, float]:
        """The cheaper push-down plan for a filter: faiss top-K with the allowed set as a selector, or
        candidates; with the selector plan's search parameters, and the codes the lists hold."""
        nn_field = self.index.fields[nn.key]
        codes = nn_field.expected_codes(nn.nprobe)
        c, allowed = self.costs, len(entry.ids)
        members = allowed * codes / max(nn_field.ntotal, 1)
        build = 0.0 if entry.selector is not None else self.selector_cost(allowed)
        selector = codes * c.selector_check + build + members
        candidates = allowed * c.candidate_per_allowed + members * c.candidate_per_hit
        if selector > candidates:
            return "candidates", None, codes
        return "selector", self.entry_params(entry, nn_field, nn), codes

    def entry_params(self, entry: FilterEntry, nn_field: NNField, nn: NN) -> SearchParams:
        """Search parameters with the entry's selector (built once per entry, key and nprobe)."""
        pair = entry.params(nn.key, nn.nprobe)
        if pair is None:
            c, count = self.costs, self.index.internal_count
            selector = entry.get_selector(
                count, len(entry.ids) * c.hash_per_allowed > count * c.bitmap_per_id
            )
            pair = entry.set_params(nn.key, nn.nprobe, nn_field.search_params(nn.nprobe, selector))
        return pair

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
            entry = None if allowed is None else self._entries.get(id(allowed))
            if allowed is None:
                plan = "scan"
            else:
                plan = self.choose_plan(codes, len(allowed), node.radius, nn_field, entry)
            min_score = 1.0 - node.radius
            if plan == "candidates":
                probe = nn_field.probe(vector, node.nprobe)
                ids, scores = self.candidates(nn_field, probe, allowed, min_score, entry)
            elif plan == "selector" and entry is not None:
                params = self.entry_params(entry, nn_field, node)
                ids, scores = nn_field.scan_radius(vector, node.nprobe, min_score, params=params)
            else:
                selector = self.selector(allowed) if plan == "selector" else None
                ids, scores = nn_field.scan_radius(vector, node.nprobe, min_score, selector)
        if allowed is not None and plan == "scan":
            keep = member_mask(ids, allowed)
            ids, scores = ids[keep], scores[keep]
        mode = "radius" if node.k is None else "top-k"
        allowed_count = None if allowed is None else len(allowed)
        stats = NNStats(node.key, mode, node.nprobe, round(codes), allowed_count, plan, len(ids), None, True)
        self.stats.append(stats)
        return ids, scores

    def choose_plan(
        self, codes: float, allowed: int, radius: float, nn_field: NNField, entry: FilterEntry | None = None
    ) -> str:
        """The cheapest radius-mode plan for about `codes` codes in the probed lists and `allowed` ids (a
        cached filter `entry` may hold its selector already)."""
        c = self.costs
        passing = 1.0 if radius >= 1.0 else c.pass_fraction
        members = allowed * codes / max(nn_field.ntotal, 1)  # allowed ids expected in the probed lists
        build = 0.0 if entry is not None and entry.selector is not None else self.selector_cost(allowed)
        cost = {
            "scan": codes * (1 + passing * c.scan_result),
            "selector": codes * c.selector_check + build + members * (1 + passing * c.scan_result),
            "candidates": allowed * c.candidate_per_allowed + members * c.candidate_per_hit,
        }
        return min(PLANS, key=cost.__getitem__)

    def selector_cost(self, allowed: int) -> float:
        return min(
            allowed * self.costs.hash_per_allowed, self.index.internal_count * self.costs.bitmap_per_id
        )

    def candidates(
        self,
        nn_field: NNField,
        probe: Probe,
        allowed: np.ndarray,
        min_score: float,
        entry: FilterEntry | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Allowed documents in the probed clusters, scored from their codes, kept when >= min_score (the
        clusters of a cached filter's documents are looked up once, and kept with it)."""
        if entry is not None and entry.ids is allowed:
            clusters = entry.clusters(nn_field.key, nn_field.clusters_of)
        else:
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
