"""The paper's Table 3 on synthetic clustered embeddings: quantisation schemes tuned against % scanned.

Documents: `--docs` unit vectors of dimension `--dim` in 1,000 Zipf-sized clusters (unbalanced inverted
lists, as with real embeddings); queries are noisy copies of one target document each. Every scheme of the
sweep (IVF/IMI coarse quantisation with PQ at d/8, d/4, d/2 bytes, OPQ, PCA+PQ, and IVF-Flat as the
uncompressed baseline) is measured by ebr.ann.quantize.tune at every nprobe: 1-recall@10 against blocked exact
KNN, recall@10 of the targets, share of the documents scanned, µs per query (one thread). The exact search of
the same queries is timed in the same run as the baseline.

    python benchmarks/quantization.py --out /tmp/ebr-quant-bench  # docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import faiss

from ebr.ann.knn import exact_knn
from ebr.ann.quantize import table3_markdown, tune
from ebr.config import retrain_defaults
from ebr.datasets.synthetic import clustered_dataset


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
        ),
        nlists=(args.nlist,),
        imi_bits=(args.imi_bits,),
        nprobes=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        k=10,
        tuning_queries=args.queries,
        seed=args.seed,
    )
    start = time.perf_counter()
    result = tune(data.docs, data.queries, cfg, data.targets)
    tune_s = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "config": repr(replace(cfg)),
        "exact_search_us_per_query": exact_us,
        "tune_seconds": tune_s,
        "tune": result.to_dict(),
    }
    (args.out / "quantization.json").write_text(json.dumps(summary, indent=2))
    table = table3_markdown(result)
    (args.out / "quantization.md").write_text(table)
    print(table)
    print(f"exact search: {exact_us:.0f} µs/query; whole sweep (train, add, search): {tune_s:.0f} s")


if __name__ == "__main__":
    main()
