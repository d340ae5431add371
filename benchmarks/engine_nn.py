"""Pure (nn) queries: the engine against raw faiss search on the same index, one thread, same run.

For each nprobe, radius mode `(nn bench :radius r :nprobe p)` is compared with faiss `range_search` at the
same threshold, and top-K mode `(nn bench :k K :nprobe p)` with faiss `search`. The two run query by query,
alternating which goes first (the second finds the probed lists in cache), so that load on the machine hits
both alike; their results are checked to be the same ids. The engine's time includes the (memoised) parse
as served, the scan, scoring and ordering by score (faiss's range search returns its hits unordered).

    OPENBLAS_NUM_THREADS=1 python benchmarks/engine_nn.py     # docs/benchmarks.md (Retrieval engine)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace

import faiss
import numpy as np
from engine_data import KEY, BenchData, add_data_args, load

from ebr.config import engine_defaults
from ebr.retrieval.executor import execute
from ebr.retrieval.query import parse_cached


def latency_stats(seconds: list[float]) -> dict[str, float]:
    """p50, p99, QPS (1 / mean latency) and QPS over the fastest 99% (without the scheduler's stalls)."""
    ms = np.array(seconds) * 1000
    p99 = float(np.percentile(ms, 99))
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": p99,
        "qps": float(1000 / ms.mean()),
        "qps_99": float(1000 / ms[ms <= p99].mean()),
    }


def compare(data: BenchData, engine: Callable, raw: Callable, repeats: int) -> dict:
    times: dict[str, list[float]] = {"engine": [], "faiss": []}
    same = results = 0
    for _ in range(repeats):
        for i, q in enumerate(data.queries):
            found = {}
            for name, search in (("engine", engine), ("faiss", raw))[:: 1 if i % 2 == 0 else -1]:
                t0 = time.perf_counter()
                ids = search(q)
                times[name].append(time.perf_counter() - t0)
                found[name] = set(ids.tolist())
            same += found["engine"] == found["faiss"]
            results += len(found["faiss"])
    e, f = latency_stats(times["engine"]), latency_stats(times["faiss"])
    runs = repeats * len(data.queries)
    return {
        "engine": e,
        "faiss": f,
        "overhead_p50": e["p50_ms"] / f["p50_ms"],
        "same_results": same / runs,
        "mean_results": results / runs,
    }


def run(data: BenchData, nprobes: list[int], radius: float, ks: list[int], repeats: int) -> list[dict]:
    index = data.index
    nn_index = index.fields[KEY].index
    limits = replace(engine_defaults().limits, max_nprobe=max(nprobes))
    rows = []
    for nprobe in nprobes:
        ivf = faiss.SearchParametersIVF(nprobe=nprobe)
        params = (
            faiss.SearchParametersPreTransform(index_params=ivf)
            if isinstance(nn_index, faiss.IndexPreTransform)
            else ivf
        )

        def engine(q: np.ndarray, expr: str) -> np.ndarray:
            return execute(index, parse_cached(expr, limits), {KEY: q}, limit=None).doc_ids

        def faiss_range(q: np.ndarray, params=params) -> np.ndarray:
            return nn_index.range_search(q[None, :], float(1 - radius), params=params)[2]

        def faiss_top(q: np.ndarray, k: int, params=params) -> np.ndarray:
            ids = nn_index.search(q[None, :], k, params=params)[1][0]
            return ids[ids >= 0]

        expr = f"(nn {KEY} :radius {radius} :nprobe {nprobe})"
        row = compare(data, lambda q, expr=expr: engine(q, expr), faiss_range, repeats)
        rows.append({"nprobe": nprobe, "mode": "radius, all hits", **row})
        for k in ks:
            expr = f"(nn {KEY} :k {k} :nprobe {nprobe})"
            row = compare(data, lambda q, expr=expr: engine(q, expr), lambda q, k=k: faiss_top(q, k), repeats)
            rows.append({"nprobe": nprobe, "mode": f"top-{k}", **row})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| nprobe | mode | results | engine p50 / p99 ms | faiss p50 / p99 ms | engine QPS (fastest 99%) "
        "| faiss QPS (fastest 99%) | overhead (p50) | same ids |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, f = r["engine"], r["faiss"]
        lines.append(
            f"| {r['nprobe']} | {r['mode']} | {r['mean_results']:.0f} "
            f"| {e['p50_ms']:.3f} / {e['p99_ms']:.3f} | {f['p50_ms']:.3f} / {f['p99_ms']:.3f} "
            f"| {e['qps']:.0f} ({e['qps_99']:.0f}) | {f['qps']:.0f} ({f['qps_99']:.0f}) "
            f"| {r['overhead_p50']:.2f}x | {r['same_results']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--radius", type=float, default=0.5)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    rows = run(data, args.nprobe, args.radius, args.k, args.repeats)
    out = {"args": vars(args) | {"workdir": str(args.workdir)}, "rows": rows}
    (args.workdir / "engine_nn.json").write_text(json.dumps(out, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
