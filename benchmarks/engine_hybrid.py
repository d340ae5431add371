"""Hybrid (and (term F) (nn ...)) queries against exact filtered search, next to the dual-index way.

For each filter selectivity (0.1%, 1%, 10% of the documents), every query gets a random filter term of that
level and the exact answer is the top 10 of the filter's documents by true cosine similarity. Compared, one
thread, same run:
  engine radius   (and (term F) (nn bench :radius 2 :nprobe p)), ordered by score, limit 10: the planner
                  picks scan / selector / candidates (all of them are also forced, to calibrate its costs);
  engine top-K    (and (term F) (nn bench :k K :nprobe p)): the paper's top-K mode (K nearest, then F);
  dual index      faiss top-K' (nprobe p), then the hits filtered by F's posting list: what two separate
                  indexes give.
Recall@10 is against the exact filtered top 10. A second table compares radius and top-K mode on pure nn
queries against exact range / exact top-K sets.

    OPENBLAS_NUM_THREADS=1 python benchmarks/engine_hybrid.py   # docs/benchmarks.md (Retrieval engine)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import faiss
import numpy as np
from engine_data import KEY, LEVELS, SELECTIVITY, add_data_args, filter_term, load
from engine_nn import latency_stats

from ebr.config import engine_defaults
from ebr.retrieval.executor import execute
from ebr.retrieval.query import parse_cached

IMPOSSIBLE = 1e12
FORCED = {  # costs under which the planner picks one plan (the selector kind still by the default costs)
    "scan": replace(engine_defaults().planner, selector_check=IMPOSSIBLE, candidate_per_allowed=IMPOSSIBLE),
    "selector": replace(
        engine_defaults().planner,
        scan_result=IMPOSSIBLE,
        pass_fraction=1,
        selector_check=0,
        candidate_per_allowed=IMPOSSIBLE,
    ),
    "candidates": replace(engine_defaults().planner, candidate_per_allowed=0, candidate_per_hit=0),
}
LIMITS = replace(engine_defaults().limits, max_nprobe=4096, max_k=100_000)


def exact_filtered_top(data, query: np.ndarray, members: np.ndarray, k: int) -> set[int]:
    scores = np.asarray(data.vectors[members]) @ query
    return set(members[np.argsort(-scores)[:k]].tolist())


def recall(got: list[int], truth: set[int]) -> float:
    return len(set(got) & truth) / max(len(truth), 1)


def hybrid(data, nprobes: list[int], ks: list[int], n_queries: int, seed: int) -> list[dict]:
    index = data.index
    nn_field = index.fields[KEY]
    rng = np.random.default_rng(seed)
    rows = []
    for level in ("location", "region", "country"):
        prefix, div = LEVELS[level]
        cities = rng.integers(1000, size=n_queries)
        terms = [filter_term(level, int(c)) for c in cities]
        members = {
            t: np.flatnonzero(data.cities // div == int(t.split(":")[1][len(prefix) :])) for t in terms
        }
        truth = [
            exact_filtered_top(data, q, members[t], 10) for q, t in zip(data.queries, terms, strict=False)
        ]
        configs = []
        for nprobe in nprobes:
            for plan in ("planner", *FORCED):
                configs.append(("engine radius", plan, nprobe, None))
            for k in ks:
                configs.append(("engine top-K", "scan", nprobe, k))
                configs.append(("dual index", "-", nprobe, k))
        for system, plan, nprobe, k in configs:
            costs = FORCED.get(plan, engine_defaults().planner)
            times, recalls, plans = [], [], {}
            params = faiss.SearchParametersPreTransform(index_params=faiss.SearchParametersIVF(nprobe=nprobe))
            for q, term, want in zip(data.queries, terms, truth, strict=False):
                t0 = time.perf_counter()
                if system == "dual index":
                    _, ids = nn_field.index.search(q[None, :], k, params=params)
                    ids = ids[0][ids[0] >= 0]
                    posting = index.posting(term)
                    pos = np.minimum(np.searchsorted(posting, ids), len(posting) - 1)
                    got = ids[posting[pos] == ids][:10].tolist()
                else:
                    nn = f":radius 2 :nprobe {nprobe}" if k is None else f":k {k} :nprobe {nprobe}"
                    expr = f"(and (term {term}) (nn {KEY} {nn}))"
                    hits = execute(index, parse_cached(expr, LIMITS), {KEY: q}, limit=10, costs=costs)
                    got = hits.doc_ids.tolist()
                    chosen = hits.nn[0].plan if hits.nn else "none"
                    plans[chosen] = plans.get(chosen, 0) + 1
                times.append(time.perf_counter() - t0)
                recalls.append(recall(got, want))
            rows.append(
                {
                    "level": level,
                    "selectivity": SELECTIVITY[level],
                    "system": system,
                    "plan": plan,
                    "nprobe": nprobe,
                    "k": k,
                    "recall_at_10": float(np.mean(recalls)),
                    **latency_stats(times),
                    "plans_chosen": plans,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def radius_vs_top_k(
    data, nprobes: list[int], radii: list[float], ks: list[int], n_queries: int
) -> list[dict]:
    """Pure nn: radius mode against the exact range set, top-K mode against the exact top K."""
    index = data.index
    queries = data.queries[:n_queries]
    exact_scores = []  # per query: all document scores above the smallest threshold, and the top max(ks)
    floor = 1 - max(radii)
    above: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.float32))] * len(
        queries
    )
    top: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.float32))] * len(
        queries
    )
    for start in range(0, len(data.vectors), 200_000):
        block = np.asarray(data.vectors[start : start + 200_000])
        scores = block @ queries.T
        for i in range(len(queries)):
            keep = np.flatnonzero(scores[:, i] >= floor)
            above[i] = (
                np.concatenate([above[i][0], keep + start]),
                np.concatenate([above[i][1], scores[keep, i]]),
            )
            best = np.argpartition(-scores[:, i], max(ks))[: max(ks)]
            ids = np.concatenate([top[i][0], best + start])
            vals = np.concatenate([top[i][1], scores[best, i]])
            order = np.argsort(-vals)[: max(ks)]
            top[i] = (ids[order], vals[order])
    exact_scores = list(zip(above, top, strict=True))
    rows = []
    for nprobe in nprobes:
        for radius in radii:
            times, precisions, recalls, sizes = [], [], [], []
            expr = f"(nn {KEY} :radius {radius} :nprobe {nprobe})"
            for q, ((ids, scores), _) in zip(queries, exact_scores, strict=True):
                t0 = time.perf_counter()
                hits = execute(index, parse_cached(expr, LIMITS), {KEY: q}, limit=None)
                times.append(time.perf_counter() - t0)
                truth = set(ids[scores >= 1 - radius].tolist())
                got = set(hits.doc_ids.tolist())
                sizes.append(len(got))
                precisions.append(len(got & truth) / max(len(got), 1))
                recalls.append(len(got & truth) / max(len(truth), 1))
            rows.append(
                {
                    "mode": f"radius {radius}",
                    "nprobe": nprobe,
                    "results": float(np.mean(sizes)),
                    "precision": float(np.mean(precisions)),
                    "recall": float(np.mean(recalls)),
                    **latency_stats(times),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        for k in ks:
            times, recalls = [], []
            expr = f"(nn {KEY} :k {k} :nprobe {nprobe})"
            for q, (_, (ids, _scores)) in zip(queries, exact_scores, strict=True):
                t0 = time.perf_counter()
                hits = execute(index, parse_cached(expr, LIMITS), {KEY: q}, limit=None)
                times.append(time.perf_counter() - t0)
                recalls.append(recall(hits.doc_ids.tolist(), set(ids[:k].tolist())))
            rows.append(
                {
                    "mode": f"top-{k}",
                    "nprobe": nprobe,
                    "results": float(k),
                    "precision": float("nan"),
                    "recall": float(np.mean(recalls)),
                    **latency_stats(times),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(out: dict) -> str:
    lines = [
        "| filter | system | plan | nprobe | K' | recall@10 | p50 ms | p99 ms | QPS | plans chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["hybrid"]:
        chosen = ", ".join(f"{p} {n}" for p, n in sorted(r["plans_chosen"].items()))
        lines.append(
            f"| {r['level']} ({r['selectivity']:.1%}) | {r['system']} | {r['plan']} | {r['nprobe']} "
            f"| {r['k'] or '-'} | {r['recall_at_10']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['qps']:.0f} | {chosen} |"
        )
    lines += [
        "",
        "| mode | nprobe | results | precision | recall | p50 ms | p99 ms | QPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["modes"]:
        lines.append(
            f"| {r['mode']} | {r['nprobe']} | {r['results']:.0f} | {r['precision']:.3f} | {r['recall']:.3f} "
            f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['qps']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--hybrid-queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument(
        "--k", type=int, nargs="+", default=[100, 1000, 10000], help="top-K' of top-K / dual index"
    )
    parser.add_argument("--radius", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument("--mode-k", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    out = {
        "args": vars(args) | {"workdir": str(args.workdir)},
        "hybrid": hybrid(data, args.nprobe, args.k, args.hybrid_queries, args.seed),
        "modes": radius_vs_top_k(data, args.nprobe, args.radius, args.mode_k, args.hybrid_queries),
    }
    (args.workdir / "engine_hybrid.json").write_text(json.dumps(out, indent=2))
    print(markdown(out))


if __name__ == "__main__":
    main()
