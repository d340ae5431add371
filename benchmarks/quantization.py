"""The paper's Table 3 on synthetic clustered embeddings: quantisation schemes tuned against % scanned.

Documents: `--docs` unit vectors of dimension `--dim` in 1,000 Zipf-sized clusters (unbalanced inverted
lists, as with real embeddings); queries are noisy copies of one target document each. Every scheme of the
sweep (IVF/IMI coarse quantisation with PQ at d/8, d/4, d/2 bytes, OPQ, PCA+PQ, and IVF-Flat as the
uncompressed baseline) is measured by ebr.ann.quantize.tune at every nprobe: 1-recall@10 against blocked exact
KNN, recall@10 of the targets, share of the documents scanned, µs per query (one thread). The exact search of
the same queries is timed in the same run as the baseline. `--fast-scan` adds 4-bit fast-scan PQ
(`PQ{m}x4fs`, at d/4 and d/2 sub-quantisers) and RaBitQ (`RaBitQ`, `RaBitQfs`) to the sweep, and measures the
relative cost of scanning one code per code type (the `index.scan_cost` the tuner weighs the scanned share
with): every built index searched at the same nprobe (nlist/8), rounds interleaved across indexes, µs per
scanned code over the IndexIVFPQ one.

    python benchmarks/quantization.py --out /tmp/ebr-quant-bench  # docs/benchmarks.md
    python benchmarks/quantization.py --fast-scan --out /tmp/ebr-quant-fs
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from ebr.ann.knn import exact_knn
from ebr.ann.quantize import code_type, search_scanned, table3_markdown, tune
from ebr.config import retrain_defaults
from ebr.datasets.synthetic import clustered_dataset
from ebr.retrieval.quantized import unsupported_reason


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--imi-bits", type=int, default=6)
    parser.add_argument("--query-noise", type=float, default=1.5, help="norm of the noise added to a target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-scan", action="store_true", help="add fast-scan codes, measure scan costs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the scan-cost timing")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    d = args.dim
    data = clustered_dataset(
        args.docs, args.queries, d, n_clusters=1000, query_noise=args.query_noise, seed=args.seed
    )
    start = time.perf_counter()
    exact_knn(data.queries, data.docs, 10)
    exact_us = 1e6 * (time.perf_counter() - start) / args.queries

    cfg = replace(
        retrain_defaults().index,
        factories=(
            f"IVF{{nlist}},PQ{d // 8}x8",
            "IVF{nlist},PQ{m}x{nbits}",
            "OPQ{m},IVF{nlist},PQ{m}x{nbits}",
            f"IVF{{nlist}},PQ{d // 2}x8",
            "PCAR{pca_d},IVF{nlist},PQ{m}x{nbits}",
            "IMI2x{imi_bits},PQ{m}x{nbits}",
            "IVF{nlist},Flat",
        )
        + (
            (
                "IVF{nlist},PQ{m}x4fs",
                f"IVF{{nlist}},PQ{d // 2}x4fs",
                "IVF{nlist},RaBitQ",
                "IVF{nlist},RaBitQfs",
            )
            if args.fast_scan
            else ()
        ),
        nlists=(args.nlist,),
        imi_bits=(args.imi_bits,),
        nprobes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        k=10,
        tuning_queries=args.queries,
        seed=args.seed,
        early_stop=False,  # every point of every scheme, for the table
    )
    start = time.perf_counter()
    result = tune(data.docs, data.queries, cfg, data.targets, unservable=unsupported_reason)
    tune_s = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "config": repr(replace(cfg)),
        "exact_search_us_per_query": exact_us,
        "tune_seconds": tune_s,
        "tune": result.to_dict(),
    }
    table = table3_markdown(result)
    if args.fast_scan:
        reference = f"IVF{args.nlist},PQ{d // 4}x8"
        costs = scan_costs(result, data.queries, args.nlist // 8, args.rounds, reference)
        summary["scan_cost"] = costs
        table += "\n" + scan_cost_markdown(costs, args.nlist // 8)
    (args.out / "quantization.json").write_text(json.dumps(summary, indent=2))
    (args.out / "quantization.md").write_text(table)
    print(table)
    print(f"exact search: {exact_us:.0f} µs/query; whole sweep (train, add, search): {tune_s:.0f} s")


def scan_costs(
    result, queries: np.ndarray, nprobe: int, rounds: int, reference: str
) -> dict[str, dict[str, float]]:
    """Per IVF scheme in the input space: µs per scanned code at `nprobe` (rounds interleaved across the
    indexes, best round kept), and that over the `reference` scheme's (8-bit PQ at d/4 bytes)."""
    indexes = {
        f: i for f, i in result.indexes.items() if "IMI" not in f and "PCA" not in f and "OPQ" not in f
    }
    shares = {f: search_scanned(i, queries, 10, nprobe)[2] for f, i in indexes.items()}
    best = dict.fromkeys(indexes, float("inf"))
    for _ in range(rounds):
        for factory, index in indexes.items():
            start = time.perf_counter()
            search_scanned(index, queries, 10, nprobe)
            best[factory] = min(best[factory], time.perf_counter() - start)
    per_code = {f: 1e6 * best[f] / (shares[f] * len(queries) * indexes[f].ntotal) for f in indexes}
    pq = (
        reference
        if reference in indexes
        else next(f for f in indexes if code_type(indexes[f]) == "IndexIVFPQ")
    )
    return {
        f: {
            "code_type": code_type(indexes[f]),
            "bytes": faiss.extract_index_ivf(indexes[f]).code_size,
            "us_per_code": per_code[f],
            "relative": per_code[f] / per_code[pq],
            "scanned": shares[f],
        }
        for f in indexes
    }


def scan_cost_markdown(costs: dict[str, dict[str, float]], nprobe: int) -> str:
    lines = [
        f"Cost of scanning one code (nprobe {nprobe}, one thread, best of the interleaved rounds; relative: "
        "over 8-bit PQ at d/4 bytes):",
        "",
        "| scheme | faiss class | bytes/doc | ns per scanned code | relative |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {f} | {c['code_type']} | {c['bytes']} | {1000 * c['us_per_code']:.2f} | {c['relative']:.2f} |"
        for f, c in costs.items()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
