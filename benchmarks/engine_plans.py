"""Calibrate the planner: the unit costs of the nn plans, relative to faiss scanning one PQ code.

Each unit is timed on the benchmark index (one thread, median over queries) and divided by the time faiss
takes per code scanned; the printed YAML is what conf/engine/default.yaml `engine.planner` holds.

    OPENBLAS_NUM_THREADS=1 python benchmarks/engine_plans.py   # docs/benchmarks.md (Retrieval engine)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import faiss
import numpy as np
from engine_data import KEY, add_data_args, load

from ebr.retrieval.executor import member_mask


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def calibrate(data, nprobe: int, repeats: int, seed: int) -> dict[str, float]:
    index = data.index
    nn_field = index.fields[KEY]
    rng = np.random.default_rng(seed)
    n = index.internal_count
    queries = data.queries[:repeats]
    probes = [nn_field.probe(q, nprobe) for q in queries]
    codes = float(np.mean([nn_field.list_sizes(p.lists) for p in probes]))

    def per_query(fn: Callable[[np.ndarray, int], object]) -> float:
        times = []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            fn(q, i)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    nothing = per_query(lambda q, i: nn_field.scan_radius(q, nprobe, 1.5))  # scans, collects no hit
    code = nothing / codes

    def scan_all(q: np.ndarray, i: int) -> None:
        ids, _ = nn_field.scan_radius(q, nprobe, -1.5)  # every code is a hit
        ids = ids[np.argsort(ids)]
        member_mask(ids, allowed_1pct)

    allowed_1pct = np.sort(rng.choice(n, size=n // 100, replace=False)).astype(np.int64)
    everything = per_query(scan_all)
    scan_result = (everything - nothing) / codes

    bitmap_build = median_seconds(lambda: np.packbits(_bits(n, allowed_1pct), bitorder="little"), repeats)
    bitmap = np.packbits(_bits(n, allowed_1pct[:1]), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    checked = per_query(lambda q, i: nn_field.scan_radius(q, nprobe, 1.5, selector))
    selector_check = checked / codes  # no id passes: every code costs a selector check, no distance

    hash_ids = allowed_1pct[:10_000]
    hash_build = median_seconds(
        lambda: faiss.IDSelectorBatch(len(hash_ids), faiss.swig_ptr(hash_ids)), repeats
    )

    def lookup() -> None:
        clusters = nn_field.clusters_of(allowed_1pct)
        probed = np.zeros(nn_field.nlist + 1, dtype=bool)
        probed[probes[0].lists] = True
        allowed_1pct[probed[clusters]]

    candidate_lookup = median_seconds(lookup, repeats)
    hits = allowed_1pct  # 1% of the index: decoding goes to memory, as in a real candidates plan
    candidate_score = median_seconds(lambda: nn_field.score(probes[0].query, hits), max(repeats // 10, 5))
    seconds = {
        "code": code,
        "scan_result": scan_result,
        "selector_check": selector_check,
        "hash_per_allowed": hash_build / len(hash_ids),
        "bitmap_per_id": bitmap_build / n,
        "candidate_per_allowed": candidate_lookup / len(allowed_1pct),
        "candidate_per_hit": candidate_score / len(hits),
    }
    return {
        "codes_per_query": codes,
        "seconds": seconds,
        "costs": {k: v / code for k, v in seconds.items() if k != "code"},
    }


def _bits(n: int, ids: np.ndarray) -> np.ndarray:
    bits = np.zeros(n, dtype=bool)
    bits[ids] = True
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    result = calibrate(data, args.nprobe, args.repeats, args.seed)
    (args.workdir / "engine_plans.json").write_text(json.dumps(result, indent=2))
    print(
        f"faiss scans {result['codes_per_query']:.0f} codes per query at nprobe {args.nprobe}, "
        f"{result['seconds']['code'] * 1e9:.2f} ns per code"
    )
    print("planner:  # engine.planner in conf/engine/default.yaml (pass_fraction is a workload assumption)")
    for name, cost in result["costs"].items():
        print(f"  {name}: {cost:.2f}")


if __name__ == "__main__":
    main()
