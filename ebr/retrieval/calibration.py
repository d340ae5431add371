"""Templates calibrated per version (paper §4.1: re-tune after every model change): for a vertical and a
retriever, choose the expression's nprobe and radius (and, when asked, a BM25 fusion) on the tuning sessions,
through the engine itself, against a recall target relative to the same model's exact top-K and a budget of
documents scanned.

Search, for a vertical's sessions (their requests and clicked targets) and the retriever's exact top-K recall
`reference`. Steps 1 to 3 measure the (nn) operator alone, so that term matches (on which logged clicks
are biased: they land on what a term-matching incumbent showed) cannot hide a starved nn:
  1. nprobe, cheapest first within the scan budget: the widest radius (every document of the probed lists
     competes on score) is tried; the first nprobe whose recall reaches `target x reference` is kept;
  2. the radius then shrinks through the candidate radii (quantiles of the model's query-target distances)
     while the recall stays within `radius_slack` of the widest radius's (and at the target): the smallest
     such radius collects the fewest hits for the same recall;
  3. without a feasible nprobe, the most accurate point within the budget is kept (`met` false);
  4. on the chosen nn, the served expression is the best by the selection metric of: the nn alone, the
     hybrid `(or $text nn)` and each fusion (`:bm25 W`, `:rrf K`) of BM25 over any query term with it.
Every measurement runs `SearchService.search_many`, the path `ebr search` and `ebr serve` answer through,
with the query embeddings computed once by the version's own towers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ebr.config import CalibrationConfig
from ebr.retrieval.query import parse
from ebr.retrieval.retrievers import RetrieverSpec, expression
from ebr.retrieval.service import SearchRequest, SearchService

log = logging.getLogger(__name__)

WIDEST = 2.0  # a cosine distance every document is within


@dataclass
class Sessions:
    """One vertical's sessions: what serving would be asked (requests) and what was clicked (targets)."""

    requests: list[SearchRequest]
    targets: list[np.ndarray]

    def sample(self, n: int, seed: int) -> Sessions:
        """At most `n` of them, a seeded subset in their order."""
        if len(self.requests) <= n:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.requests), size=n, replace=False))
        return Sessions([self.requests[i] for i in keep], [self.targets[i] for i in keep])


@dataclass
class Template:
    """The calibrated expression of a vertical and how it was chosen."""

    vertical: str
    retriever: str
    key: str  # the retriever's nn key
    expr: str
    nprobe: int
    radius: float
    fusion: str | None
    recall: float  # recall@k of the template on the sessions
    ndcg: float  # nDCG@10 of the template on the sessions
    nn_recall: float  # recall@k of its (nn) alone
    reference: float  # the retriever's exact top-K recall on the same sessions
    scanned: float  # mean share of the key's documents in the probed lists
    met: bool  # recall >= target x reference within the budget
    k: int
    sessions: int
    tried: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """The nn's recall against its model's exact top-K recall (the calibration target)."""
        return self.nn_recall / self.reference if self.reference > 0 else math.nan

    def to_dict(self, tried: bool = True) -> dict[str, Any]:
        out = asdict(self) | {"ratio": self.ratio}
        return out if tried else {k: v for k, v in out.items() if k != "tried"}


def served_ids(
    service: SearchService, requests: Sequence[SearchRequest], expr: str, k: int
) -> list[np.ndarray]:
    """The top-k doc ids the service returns for `requests` with `expr` as their expression."""
    asked = [replace(r, expr=expr, vertical=None, limit=k) for r in requests]
    return [response.hits.doc_ids for response in service.search_many(asked)]


def recall(found: Sequence[np.ndarray], targets: Sequence[np.ndarray], k: int) -> float:
    """Mean over sessions of |top-k ∩ T| / |T| (sessions without targets skipped)."""
    values = [np.isin(t, f[:k]).mean() for f, t in zip(found, targets, strict=True) if len(t)]
    return float(np.mean(values)) if values else 0.0


def ndcg10(found: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """Mean nDCG@10 with the targets as relevant (grade 1)."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    values = []
    for f, t in zip(found, targets, strict=True):
        if not len(t):
            continue
        gains = np.isin(f[:10], t).astype(float)
        ideal = discounts[: min(len(t), 10)].sum()
        values.append(float((gains * discounts[: len(gains)]).sum() / ideal))
    return float(np.mean(values)) if values else 0.0


def with_vectors(service: SearchService, spec: RetrieverSpec, vertical: str, sessions: Sessions) -> Sessions:
    """The sessions with their query embeddings of every key the spec needs, encoded once by the version's
    towers (as serving would encode them)."""
    probe = parse(expression(spec, vertical, nprobe=1, radius=WIDEST), service.config.limits)
    roots = [probe] * len(sessions.requests)
    vectors = service.query_vectors(roots, sessions.requests)
    requests = [
        replace(r, vector={k: v.tolist() for k, v in vec.items()})
        for r, vec in zip(sessions.requests, vectors, strict=True)
    ]
    return Sessions(requests, sessions.targets)


def scanned_share(service: SearchService, key: str, sessions: Sessions, nprobe: int) -> float:
    """Mean share of the key's documents held by the `nprobe` clusters probed for each session's query."""
    nn_field = service.engine.index.fields[key]
    total = max(nn_field.ntotal, 1)
    shares = [
        nn_field.list_sizes(nn_field.probe(np.asarray(r.vector[key], np.float32), nprobe).lists) / total
        for r in sessions.requests
    ]
    return float(np.mean(shares)) if shares else 0.0


def calibrate(
    service: SearchService,
    spec: RetrieverSpec,
    vertical: str,
    sessions: Sessions,
    reference: float,
    radii: Sequence[float],
    k: int,
    cfg: CalibrationConfig,
) -> Template:
    """The template of `spec` on `vertical` (see the module docstring)."""
    check(cfg)
    sessions = with_vectors(service, spec, vertical, sessions.sample(cfg.max_sessions, cfg.seed))
    key = spec.index_key
    nlist = service.engine.index.fields[key].nlist
    nprobes = sorted({min(p, nlist) for p in cfg.nprobes})
    tried: list[dict[str, Any]] = []

    def measure(nprobe: int, radius: float, fusion: str | None = None, terms: bool = False) -> dict[str, Any]:
        expr = expression(spec, vertical, nprobe, radius=radius, fusion=fusion, terms=terms)
        found = served_ids(service, sessions.requests, expr, k)
        point = {
            "nprobe": nprobe,
            "radius": radius,
            "fusion": fusion,
            "terms": terms,
            "expr": expr,
            "recall": recall(found, sessions.targets, k),
            "ndcg": ndcg10(found, sessions.targets),
            "scanned": scans[nprobe],
        }
        tried.append(point)
        return point

    scans = {p: scanned_share(service, key, sessions, p) for p in nprobes}
    goal = cfg.target * reference
    affordable = [p for p in nprobes if scans[p] <= cfg.max_scanned] or nprobes[:1]
    chosen = None
    for nprobe in affordable:
        point = measure(nprobe, WIDEST)
        if point["recall"] >= goal:
            chosen = point
            break
    met = chosen is not None
    if chosen is None:  # the most accurate affordable point
        chosen = max(tried, key=lambda p: (p["recall"], -p["scanned"]))
    else:
        keep = max(goal, chosen["recall"] - cfg.radius_slack)
        for radius in sorted(set(radii), reverse=True):
            if radius >= chosen["radius"]:
                continue
            point = measure(chosen["nprobe"], radius)
            if point["recall"] < keep:
                break
            chosen = point
    best = measure(chosen["nprobe"], chosen["radius"], terms=True)  # the hybrid, unless another ranks better
    for point in [measure(chosen["nprobe"], chosen["radius"], f, terms=True) for f in cfg.fusions] + [chosen]:
        if _score(point, cfg.metric) > _score(best, cfg.metric):
            best = point
    log.info(
        "calibrated %s on %s: %s recall@%d %.4f (nn alone %.4f, exact %.4f), %.2f%% scanned",
        spec.name, vertical, best["expr"], k, best["recall"], chosen["recall"], reference,
        100 * best["scanned"],
    )  # fmt: skip
    return Template(
        vertical=vertical,
        retriever=spec.name,
        key=key,
        expr=best["expr"],
        nprobe=best["nprobe"],
        radius=best["radius"],
        fusion=best["fusion"],
        recall=best["recall"],
        ndcg=best["ndcg"],
        nn_recall=chosen["recall"],
        reference=reference,
        scanned=best["scanned"],
        met=met,
        k=k,
        sessions=len(sessions.requests),
        tried=tried,
    )


def check(cfg: CalibrationConfig) -> None:
    """ValueError naming the key of a setting out of range."""
    if cfg.metric not in ("recall", "ndcg"):
        raise ValueError(f"serving.metric must be recall or ndcg, got {cfg.metric!r}")
    if not 0 < cfg.target <= 1 or not 0 < cfg.max_scanned <= 1:
        raise ValueError("serving.target and serving.max_scanned must be in (0, 1]")
    if not cfg.nprobes or min(cfg.nprobes) < 1:
        raise ValueError(f"serving.nprobes must be positive integers, got {cfg.nprobes}")


def _score(point: dict[str, Any], metric: str) -> float:
    return point["ndcg"] if metric == "ndcg" else point["recall"]


def target_radii(
    distances: np.ndarray, quantiles: Sequence[float] = (0.5, 0.75, 0.9, 0.95, 0.99)
) -> list[float]:
    """Candidate radii: quantiles of the cosine distances between the sessions' queries and their targets
    (rounded up to 3 decimals, so that the quantile itself stays within), and the largest distance."""
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return []
    values = [*np.quantile(d, list(quantiles)), d.max()]
    return sorted({min(WIDEST, math.ceil(float(v) * 1000 - 1e-6) / 1000) for v in values})
