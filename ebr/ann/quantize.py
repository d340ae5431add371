"""Quantise document embeddings (§4.1) and tune the ANN index against the share of documents scanned.

Schemes are faiss `index_factory` strings (IVF or IMI coarse quantisation with PQ, OPQ or PCA+PQ, 4-bit
fast-scan PQ, RaBitQ). For every scheme and nprobe the tuner measures, on a sample of queries:
  - 1-recall@10: share of queries whose exact nearest neighbour (blocked exact KNN) is in the ANN top 10;
  - recall@K of the queries' targets, when targets are given (the quantity the recall gate checks);
  - the share of the documents scanned: the sizes of the inverted lists each query probes / the documents
    (the same definition for every code type; faiss's `ndis` counts the same for flat codes);
  - its cost: the scanned share times the code type's relative cost per scanned code (`index.scan_cost`:
    a fast-scan code costs less to compare than an 8-bit PQ code).
Points are compared by cost, not nprobe (clusters are unbalanced); the Pareto front over (cost, bytes per
code, accuracy) is kept, and the point meeting the target (by default within 2% of the exact index's
recall@K) that costs least (then: smallest codes, then most accurate) is chosen: it is on the front.

Cheaper sweeps, same choice: one coarse quantiser is trained per nlist and shared by every scheme in the
same space (an OPQ rotation gets it rotated: k-means commutes with a rotation); each scheme is encoded once
and searched at every nprobe; a scheme's sweep stops once its points cost more than a point already on
target (they can no longer be chosen; `index.past_target` more are measured for the report), or once its
accuracy stops rising (`index.plateau`, off by default).

Metric: the configured one (inner product: the retrieval engine scores cosine by inner product), except IMI,
which faiss only has for L2: IMI points are measured for comparison (on unit vectors |q-d|^2 = 2 - 2 cos,
the same order) but only points of the configured metric whose index the caller can serve (`servable`) can
be chosen. With inner product, PCA is applied without centring (an orthogonal projection preserves inner
products inside the kept subspace; centring would add a document-dependent term).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from ebr.ann.knn import METRICS, as_float32, exact_knn, one_recall_at, recall_at_k
from ebr.config import IndexConfig
from ebr.runners import SERIAL, Shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scheme:
    factory: str
    metric: str


@dataclass
class OperatingPoint:
    factory: str
    metric: str
    nlist: int
    nprobe: int
    code_size: int  # bytes per document code
    one_recall: float  # 1-recall@r against exact KNN
    recall: float | None  # recall@K of the targets
    scanned: float  # share of the documents scanned per query, 0..1
    cost: float = 0.0  # scanned x the code type's relative cost per scanned code (what the tuner minimises)
    code_type: str = ""  # the faiss class of the IVF (the key of index.scan_cost)
    search_us: float = 0.0  # wall time per query on this machine (informative; `cost` is the portable cost)
    servable: bool = True  # of the configured metric and served by the caller (the only choosable points)
    pareto: bool = False
    chosen: bool = False


@dataclass
class TuneResult:
    points: list[OperatingPoint]
    exact: dict[str, Any]  # the exact (flat) index on the same queries: recall@K, 1-recall@r = 1
    target: dict[str, Any]  # metric, threshold, reference
    chosen: OperatingPoint | None
    met: bool  # whether the chosen point meets the target (else it is the most accurate point)
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_docs: int = 0
    n_queries: int = 0
    indexes: dict[str, faiss.Index] = field(default_factory=dict, repr=False)
    stopped: list[dict[str, Any]] = field(default_factory=list)  # sweeps stopped early: scheme, nprobes, why
    seconds: dict[str, float] = field(default_factory=dict)  # exact KNN, coarse, train, add, search
    unservable: list[dict[str, str]] = field(default_factory=list)  # schemes measured, not choosable: why

    def chosen_index(self) -> faiss.Index:
        """The chosen scheme's trained, filled index, with the chosen nprobe set (saved with it by faiss)."""
        if self.chosen is None:
            raise RuntimeError("no operating point was measured")
        index = self.indexes[self.chosen.factory]
        set_nprobe(index, self.chosen.nprobe)
        return index

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_docs": self.n_docs,
            "n_queries": self.n_queries,
            "exact": self.exact,
            "target": self.target,
            "met": self.met,
            "chosen": asdict(self.chosen) if self.chosen else None,
            "points": [asdict(p) for p in self.points],
            "skipped": self.skipped,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "unservable": self.unservable,
        }


def metric_for(factory: str, default: str) -> str:
    """L2 for IMI schemes (see the module docstring), else the configured metric."""
    return "l2" if "IMI" in factory else default


def auto_nlist(n_docs: int) -> int:
    return 2 ** max(1, round(math.log2(4 * math.sqrt(n_docs))))


def expand_schemes(cfg: IndexConfig, d: int, n_train: int) -> tuple[list[Scheme], list[dict[str, str]]]:
    """Fill the factory templates ({nlist}, {imi_bits}, {m}, {nbits}, {pca_d}); skip the impossible ones."""
    m = cfg.pq_bytes or d // 4
    pca_d = cfg.pca_dim or d // 2
    nlists = sorted({auto_nlist(n_train) if v == "auto" else int(v) for v in cfg.nlists})
    schemes, skipped = [], []
    for template in cfg.factories:
        for nlist, bits in itertools.product(
            nlists if "{nlist}" in template else [0], cfg.imi_bits if "{imi_bits}" in template else [0]
        ):
            factory = template.format(nlist=nlist, imi_bits=bits, m=m, nbits=cfg.pq_nbits, pca_d=pca_d)
            dim = pca_d if "{pca_d}" in template else d
            centroids = max(nlist, 2**bits, 2**cfg.pq_nbits if "{nbits}" in template else 0)
            if "{m}" in template and dim % m:
                skipped.append({"factory": factory, "reason": f"PQ{m} does not divide dimension {dim}"})
            elif dim > d:
                skipped.append({"factory": factory, "reason": f"PCA to {dim} > dimension {d}"})
            elif centroids > n_train:
                skipped.append({"factory": factory, "reason": f"{centroids} centroids > {n_train} vectors"})
            else:
                schemes.append(Scheme(factory, metric_for(factory, cfg.metric)))
    return schemes, skipped


def _prepare_training(index: faiss.Index, opq_iterations: int | None = None) -> None:
    """Skip polysemous training (Hamming filtering, unused here, and the slowest part of training) and let
    k-means train on fewer than 39 points per centroid without one stderr line per sub-quantizer; OPQ runs
    `opq_iterations` alternations (None: faiss's default)."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False
    ivf.cp.min_points_per_centroid = 1
    quantizer = faiss.downcast_index(ivf.quantizer)
    for pq in (getattr(ivf, "pq", None), getattr(quantizer, "pq", None)):
        if pq is not None:
            pq.cp.min_points_per_centroid = 1
    transform = _rotation(index)
    if transform is not None:
        trainer = faiss.ProductQuantizer(transform.d_out, transform.M, 8)
        trainer.cp.min_points_per_centroid = 1
        transform.pq = trainer
        transform._trainer = trainer  # keep the Python object alive while faiss points at it
        if opq_iterations is not None:
            transform.niter = opq_iterations


def _rotation(index: faiss.Index) -> faiss.OPQMatrix | None:
    """The OPQ rotation in front of the IVF, if the index is one (and only one) OPQ transform + IVF."""
    if not isinstance(index, faiss.IndexPreTransform) or index.chain.size() != 1:
        return None
    transform = faiss.downcast_VectorTransform(index.chain.at(0))
    return transform if isinstance(transform, faiss.OPQMatrix) else None


def shares_coarse(index: faiss.Index) -> bool:
    """Whether the index can take a coarse quantiser trained in the input space: a flat IVF quantiser,
    directly or behind an OPQ rotation that keeps the dimension (PCA projects, IMI is a product)."""
    if not isinstance(index, (faiss.IndexIVF, faiss.IndexPreTransform)):
        return False
    if isinstance(index, faiss.IndexPreTransform):
        rotation = _rotation(index)
        if rotation is None or rotation.d_out != rotation.d_in:
            return False
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    return isinstance(quantizer, faiss.IndexFlat)


@contextmanager
def _blas_distances() -> Iterator[None]:
    """k-means assignments through BLAS: faiss's sequential kernel is ~10x slower on PQ's 4-d sub-vectors."""
    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


def training_sample(docs: np.ndarray, train_size: int, seed: int) -> np.ndarray:
    """The seeded sample of `train_size` documents (all of them when fewer) every quantiser trains on."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(docs), size=min(train_size, len(docs)), replace=False))
    return as_float32(docs[sample])


def coarse_centroids(train: np.ndarray, nlist: int, metric: str = "inner_product") -> np.ndarray:
    """The IVF coarse quantiser faiss trains for `IVF{nlist},...` on `train`: (nlist, d) centroids."""
    index = faiss.index_factory(train.shape[1], f"IVF{nlist},Flat", METRICS[metric])
    _prepare_training(index)
    with _blas_distances():
        index.train(train)
    return index.quantizer.reconstruct_n(0, nlist)


def build_index(
    factory: str,
    docs: np.ndarray,
    metric: str = "inner_product",
    train_size: int = 100_000,
    seed: int = 0,
    block_size: int = 65536,
    coarse: np.ndarray | None = None,
    opq_iterations: int | None = None,
    train: np.ndarray | None = None,
) -> faiss.Index:
    """Train `factory` on a seeded sample of `train_size` documents, then add every document (in blocks).

    `coarse`: IVF centroids trained in the input space (`coarse_centroids`, on the same sample) to use
    instead of training the scheme's own (an OPQ scheme gets them rotated; `shares_coarse` says which can);
    `train`: that sample, when the caller already drew it.
    """
    timings: dict[str, float] = {}
    index = _trained(factory, docs, metric, train_size, seed, coarse, opq_iterations, train, timings)
    _fill(index, docs, block_size)
    return index


def _trained(
    factory: str,
    docs: np.ndarray,
    metric: str,
    train_size: int,
    seed: int,
    coarse: np.ndarray | None,
    opq_iterations: int | None,
    train: np.ndarray | None,
    timings: dict[str, float],
) -> faiss.Index:
    index = faiss.index_factory(docs.shape[1], factory, METRICS[metric])
    _prepare_training(index, opq_iterations)
    train = training_sample(docs, train_size, seed) if train is None else train
    start = time.perf_counter()
    if isinstance(index, faiss.IndexPreTransform) and metric == "inner_product":
        transform = faiss.downcast_VectorTransform(index.chain.at(0))
        if isinstance(transform, faiss.PCAMatrix):  # uncentred: keep inner products (module docstring)
            transform.train(train)
            faiss.copy_array_to_vector(np.zeros(transform.d_out, dtype=np.float32), transform.b)
    with _blas_distances():
        if coarse is not None:
            if not shares_coarse(index):
                raise ValueError(f"{factory}: its coarse quantiser cannot be shared (see shares_coarse)")
            rotation = _rotation(index)
            if rotation is not None:
                rotation.train(train)
                coarse = rotation.apply(as_float32(coarse))
            faiss.extract_index_ivf(index).quantizer.add(as_float32(coarse))  # trained: IVF skips k-means
        index.train(train)
    timings["train"] = time.perf_counter() - start
    return index


def _fill(index: faiss.Index, docs: np.ndarray, block_size: int) -> None:
    for start in range(0, len(docs), block_size):
        index.add(as_float32(docs[start : start + block_size]))


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    faiss.extract_index_ivf(index).nprobe = nprobe


def list_sizes(index: faiss.Index) -> np.ndarray:
    """The number of documents in each inverted list of the index's IVF."""
    invlists = faiss.extract_index_ivf(index).invlists
    return np.array([invlists.list_size(i) for i in range(invlists.nlist)], dtype=np.int64)


def probed_share(
    index: faiss.Index, queries: np.ndarray, nprobe: int, sizes: np.ndarray | None = None
) -> float:
    """Share of the documents in the lists the queries probe at `nprobe` (the quantizer's own search, in
    the IVF's space behind any pre-transform): the documents an IVF search scans, for every code type."""
    x = as_float32(queries)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            x = faiss.downcast_VectorTransform(index.chain.at(i)).apply(x)
    ivf = faiss.extract_index_ivf(index)
    _, lists = ivf.quantizer.search(x, min(nprobe, ivf.nlist))
    sizes = list_sizes(index) if sizes is None else sizes
    return float(sizes[lists[lists >= 0]].sum()) / (len(x) * max(ivf.ntotal, 1))


def search_scanned(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int, sizes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """ANN search at `nprobe`: (scores, rows, share of the index's documents scanned per query)."""
    set_nprobe(index, nprobe)
    scores, rows = index.search(as_float32(queries), k)
    return scores, rows, probed_share(index, queries, nprobe, sizes)


def code_type(index: faiss.Index) -> str:
    """The faiss class of the index's IVF (IndexIVFPQ, IndexIVFPQFastScan, IndexIVFRaBitQ, ...)."""
    return type(faiss.downcast_index(faiss.extract_index_ivf(index))).__name__


def pareto_front(points: Sequence[OperatingPoint], accuracy: str) -> list[OperatingPoint]:
    """Points no other point beats on cost, bytes per code (both lower) and `accuracy` (higher)."""

    def dominates(q: OperatingPoint, p: OperatingPoint) -> bool:
        no_worse = (
            q.cost <= p.cost and q.code_size <= p.code_size and getattr(q, accuracy) >= getattr(p, accuracy)
        )
        better = q.cost < p.cost or q.code_size < p.code_size or getattr(q, accuracy) > getattr(p, accuracy)
        return no_worse and better

    return [p for p in points if not any(dominates(q, p) for q in points)]


def choose(
    points: Sequence[OperatingPoint], accuracy: str, threshold: float
) -> tuple[OperatingPoint | None, bool]:
    """(chosen point, target met): the servable point on target that costs least (then smallest codes,
    then most accurate); else the most accurate servable point (then the cheapest)."""
    servable = [p for p in points if p.servable]
    meeting = [p for p in servable if getattr(p, accuracy) >= threshold]
    if meeting:
        return min(meeting, key=lambda p: (p.cost, p.code_size, -getattr(p, accuracy))), True
    return max(servable, key=lambda p: (getattr(p, accuracy), -p.cost), default=None), False


def tune(
    docs: np.ndarray,
    queries: np.ndarray,
    cfg: IndexConfig,
    targets: Sequence[np.ndarray] | None = None,
    shards: Shards = SERIAL,
    what: str = "ann",
    unservable: Callable[[faiss.Index], str | None] | None = None,
) -> TuneResult:
    """Sweep schemes x nprobe on a query sample, keep the Pareto front, choose the cheapest point on target.

    `targets` are row ids into `docs` (each query's relevant documents); without them the target is on
    1-recall@r. `unservable(index)`: why the caller cannot serve an index, None if it can (e.g. the
    engine's `unsupported_reason`; without it: any index of the configured metric); only servable points
    are chosen. The built indexes are kept on the result (`chosen_index()`).
    Progress: the share of schemes built and measured, reported to `shards` as `what`, and one log line
    per scheme.
    """
    with _faiss_threads(cfg.threads):
        return _tune(docs, queries, cfg, targets, shards, what, unservable)


@contextmanager
def _faiss_threads(threads: int | None) -> Iterator[None]:
    saved = faiss.omp_get_max_threads()
    if threads:
        faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(saved)


def _scan_cost(cfg: IndexConfig, kind: str, factory: str) -> float:
    if kind not in cfg.scan_cost:
        raise ValueError(f"index.scan_cost has no relative cost for {kind} (scheme {factory})")
    return float(cfg.scan_cost[kind])


def _tune(
    docs: np.ndarray,
    queries: np.ndarray,
    cfg: IndexConfig,
    targets: Sequence[np.ndarray] | None,
    shards: Shards,
    what: str,
    unservable: Callable[[faiss.Index], str | None] | None,
) -> TuneResult:
    rng = np.random.default_rng(cfg.seed)
    if len(queries) > cfg.tuning_queries:
        pick = np.sort(rng.choice(len(queries), size=cfg.tuning_queries, replace=False))
        queries = queries[pick]
        targets = [targets[i] for i in pick] if targets is not None else None
    queries = as_float32(queries)
    metric_name = cfg.target_metric if targets is not None else "one_recall"
    if metric_name not in ("recall_at_k", "one_recall"):
        raise ValueError(f"index.target_metric: expected recall_at_k or one_recall, got {metric_name!r}")
    accuracy = "recall" if metric_name == "recall_at_k" else "one_recall"
    k = max(cfg.k if targets is not None else 0, cfg.one_recall_r)

    seconds = dict.fromkeys(("exact", "coarse", "train", "add", "search"), 0.0)
    start = time.perf_counter()
    _, exact_rows = exact_knn(queries, docs, k)
    seconds["exact"] = time.perf_counter() - start
    exact = {"one_recall": 1.0, "recall": recall_at_k(exact_rows, targets, cfg.k) if targets else None}
    reference = exact[accuracy]
    threshold = reference * (1 - cfg.max_drop) if cfg.relative else reference - cfg.max_drop
    target = {
        "metric": metric_name,
        "k": cfg.k,
        "one_recall_r": cfg.one_recall_r,
        "reference": reference,
        "threshold": threshold,
        "serving_metric": cfg.metric,
        "max_drop": cfg.max_drop,
        "relative": cfg.relative,
    }

    schemes, skipped = expand_schemes(cfg, docs.shape[1], min(cfg.train_size, len(docs)))
    train = training_sample(docs, cfg.train_size, cfg.seed)
    coarse: dict[tuple[int, str], np.ndarray] = {}  # (nlist, metric) -> centroids, shared
    points: list[OperatingPoint] = []
    indexes: dict[str, faiss.Index] = {}
    stopped: list[dict[str, Any]] = []
    not_served: list[dict[str, str]] = []
    shards.report(what, 0.0)
    for done, scheme in enumerate(schemes, 1):
        start_scheme = time.perf_counter()
        timings: dict[str, float] = {}
        shared = None
        if cfg.share_coarse:
            probe = faiss.index_factory(docs.shape[1], scheme.factory, METRICS[scheme.metric])
            if shares_coarse(probe):
                nlist = faiss.extract_index_ivf(probe).nlist
                if (nlist, scheme.metric) not in coarse:
                    start = time.perf_counter()
                    coarse[nlist, scheme.metric] = coarse_centroids(train, nlist, scheme.metric)
                    seconds["coarse"] += time.perf_counter() - start
                shared = coarse[nlist, scheme.metric]
        index = _trained(
            scheme.factory,
            docs,
            scheme.metric,
            cfg.train_size,
            cfg.seed,
            shared,
            cfg.opq_iterations,
            train,
            timings,
        )
        seconds["train"] += timings["train"]
        start = time.perf_counter()
        _fill(index, docs, 65536)
        seconds["add"] += time.perf_counter() - start
        indexes[scheme.factory] = index
        ivf = faiss.extract_index_ivf(index)
        kind = code_type(index)
        relative_cost = _scan_cost(cfg, kind, scheme.factory)
        reason = None if unservable is None else unservable(index)
        if scheme.metric != cfg.metric:
            reason = f"metric {scheme.metric}, not the served {cfg.metric}"
        if reason is not None:
            not_served.append({"factory": scheme.factory, "reason": reason})
        choosable = reason is None
        sizes = list_sizes(index)
        nprobes = sorted(p for p in cfg.nprobes if p <= ivf.nlist)
        mine: list[OperatingPoint] = []
        past = 0
        for i, nprobe in enumerate(nprobes):
            start = time.perf_counter()
            _, rows, scanned = search_scanned(index, queries, k, nprobe, sizes)
            elapsed = time.perf_counter() - start
            seconds["search"] += elapsed
            point = OperatingPoint(
                factory=scheme.factory,
                metric=scheme.metric,
                nlist=ivf.nlist,
                nprobe=nprobe,
                code_size=ivf.code_size,
                one_recall=one_recall_at(rows, exact_rows[:, 0], cfg.one_recall_r),
                recall=recall_at_k(rows, targets, cfg.k) if targets else None,
                scanned=scanned,
                cost=scanned * relative_cost,
                code_type=kind,
                search_us=1e6 * elapsed / len(queries),
                servable=choosable,
            )
            points.append(point)
            mine.append(point)
            if not cfg.early_stop or i == len(nprobes) - 1:
                continue
            best, met = choose(points, accuracy, threshold)
            if met and best is not None and point.cost > best.cost:
                past += 1  # this point, and every larger nprobe of the scheme, costs more than one on target
            if past > cfg.past_target:
                why = f"costlier than {best.factory} nprobe {best.nprobe} on target"
            elif (
                cfg.plateau is not None
                and len(mine) > 1
                and getattr(point, accuracy) - getattr(mine[-2], accuracy) <= cfg.plateau
            ):
                why = f"{accuracy} rose <= {cfg.plateau} from nprobe {mine[-2].nprobe}"
            else:
                continue
            stopped.append(
                {
                    "factory": scheme.factory,
                    "after_nprobe": nprobe,
                    "skipped": nprobes[i + 1 :],
                    "reason": why,
                }
            )
            break
        best_own = max(mine, key=lambda p: getattr(p, accuracy), default=None)
        log.info(
            "%s: %s (%s) built and measured in %.1f s (%d/%d schemes): %s",
            what, scheme.factory, scheme.metric, time.perf_counter() - start_scheme, done, len(schemes),
            f"best {accuracy} {getattr(best_own, accuracy):.4f} at {100 * best_own.scanned:.2f}% scanned"
            if best_own else f"no nprobe <= nlist {ivf.nlist}",
        )  # fmt: skip
        shards.report(what, done / len(schemes))
    if not schemes:
        shards.report(what, 1.0)
    for p in pareto_front(points, accuracy):
        p.pareto = True
    chosen, met = choose(points, accuracy, threshold)
    if chosen is not None:
        chosen.chosen = True
    return TuneResult(
        points=points,
        exact=exact,
        target=target,
        chosen=chosen,
        met=met,
        skipped=skipped,
        n_docs=len(docs),
        n_queries=len(queries),
        indexes=indexes,
        stopped=stopped,
        seconds=seconds,
        unservable=not_served,
    )


def _scheme_name(factory: str) -> str:
    return re.sub(r"x8\b", "", factory)  # PQ16x8 is the paper's PQ16


def table3_markdown(result: TuneResult) -> str:
    """The paper's Table 3 (scheme, 1-recall@10, % scanned) near the chosen point's cost, then all points."""
    t = result.target
    head = f"1-recall@{t['one_recall_r']} | recall@{t['k']}"
    lines = []
    if result.chosen is not None:
        cost = result.chosen.scanned
        lines += [
            f"At about the chosen cost ({100 * cost:.2f}% scanned), per scheme "
            f"({result.n_docs} documents, {result.n_queries} queries):",
            "",
            f"| scheme | nprobe | {head} | % scanned | bytes/doc |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        by_scheme: dict[str, list[OperatingPoint]] = {}
        for p in result.points:
            by_scheme.setdefault(p.factory, []).append(p)
        for factory, pts in by_scheme.items():
            p = min(pts, key=lambda p: abs(math.log(max(p.scanned, 1e-9) / max(cost, 1e-9))))
            lines.append(
                f"| {_scheme_name(factory)} | {p.nprobe} | {100 * p.one_recall:.2f}% | "
                f"{_pct(p.recall)} | {100 * p.scanned:.2f}% | {p.code_size} |"
            )
        lines.append(f"| Flat (exact) | - | 100.00% | {_pct(result.exact['recall'])} | 100.00% | - |")
        lines.append("")
    lines += [
        f"All points (target: {t['metric']} >= {t['threshold']:.4f}; P = Pareto front, * = chosen; "
        f"only servable {t['serving_metric']} points can be chosen; cost = % scanned x the code's relative "
        f"scan cost{'' if result.met else '; target NOT met: most accurate point chosen'}):",
        "",
        f"| scheme | metric | nlist | nprobe | {head} | % scanned | cost | bytes/doc | µs/query | |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in sorted(result.points, key=lambda p: (p.factory, p.nprobe)):
        mark = (
            ("P" if p.pareto else "") + ("*" if p.chosen else "") + ("" if p.servable else " (not servable)")
        )
        lines.append(
            f"| {_scheme_name(p.factory)} | {p.metric} | {p.nlist} | {p.nprobe} | "
            f"{100 * p.one_recall:.2f}% | {_pct(p.recall)} | {100 * p.scanned:.3f}% | {100 * p.cost:.3f}% | "
            f"{p.code_size} | {p.search_us:.0f} | {mark} |"
        )
    lines += [f"| {s['factory']} | skipped: {s['reason']} | | | | | | | | | |" for s in result.skipped]
    lines += [
        f"| {s['factory']} | not servable: {s['reason']} | | | | | | | | | |" for s in result.unservable
    ]
    lines += [
        f"| {s['factory']} | sweep stopped after nprobe {s['after_nprobe']}: {s['reason']} "
        f"(not measured: {', '.join(map(str, s['skipped']))}) | | | | | | | | | |"
        for s in result.stopped
    ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
