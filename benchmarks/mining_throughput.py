"""Offline hard-negative mining throughput (queries/s) and peak memory, blocked top-K against unblocked.

Each configuration runs in its own process, which reports its throughput and the peak of its resident memory
while mining (sampled every 10 ms) above the resident memory it had once the vectors were loaded: the
mining's own memory. The unblocked baseline searches every query in
one call (block_size = all queries), so its result matrix grows with the data; the blocked runs keep it at
block_size x window end. Vectors are deterministic clustered embeddings (ebr/datasets/synthetic.py) sized as
the simulated worlds' largest vertical (people): small 30k documents and 70k queries, large 1M documents and
100k queries; d = 64 as the towers' output. Wall-clock figures depend on what else runs on the machine;
queries per CPU-second less so.

    python benchmarks/mining_throughput.py --scale small --scale large \
        --out benchmarks/results/mining_throughput.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCALES = {"small": {"docs": 30_000, "queries": 70_000}, "large": {"docs": 1_000_000, "queries": 100_000}}


def configs(scale: str) -> list[dict]:
    """Small: exact flat top-K. Large: IVF (the paper's ANN top-K), plus exact flat on 10k queries."""
    n_q = SCALES[scale]["queries"]
    base = {"scale": scale, "window": [101, 500], "index": "flat", "block_size": 4096, "shard": None}
    if scale == "large":
        base |= {"index": "ivf", "nlist": 1024, "nprobe": 16}
    name = "flat" if scale == "small" else "IVF1024 nprobe 16"
    runs = [
        base | {"name": f"{name}, unblocked (baseline)", "block_size": n_q},
        base | {"name": f"{name}, block 4096"},
        base | {"name": f"{name}, block 4096, half the queries", "queries": n_q // 2},
        base | {"name": f"{name}, block 4096, one 10% shard", "shard": 0.1},
    ]
    if scale == "small":  # the block size sets the memory; at large scale that costs minutes, not news
        runs.insert(2, base | {"name": f"{name}, block 1024", "block_size": 1024})
        runs.append(
            base | {"name": "IVF1024 nprobe 16, block 4096", "index": "ivf", "nlist": 1024, "nprobe": 16}
        )
    else:
        runs.append(base | {"name": "flat, block 4096, 10k queries", "index": "flat", "queries": 10_000})
    return runs


class PeakRSS:
    """Samples this process's resident memory in a thread; `peak_mb` is the highest seen while running."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = 0
        self.stop = threading.Event()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.process.memory_info().rss / 2**20
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def child(config: dict) -> dict:
    """Run one configuration in this process and report it."""
    import numpy as np
    import pandas as pd

    from ebr.datasets.synthetic import clustered_dataset
    from ebr.mining.hard import Embedded, offline_hard_negatives

    sizes = SCALES[config["scale"]]
    n_q = config.get("queries", sizes["queries"])
    data = clustered_dataset(sizes["docs"], n_q, 64, n_clusters=1000, seed=0)
    doc_ids = np.arange(sizes["docs"], dtype=np.int64)
    queries = Embedded(np.arange(n_q, dtype=np.int64), data.queries)
    docs = Embedded(doc_ids, data.docs)
    positives = pd.DataFrame({"session_id": queries.ids, "doc_id": np.concatenate(data.targets)})
    start, cpu_start = time.perf_counter(), time.process_time()
    with PeakRSS() as rss:
        frame, stats = offline_hard_negatives(
            queries,
            docs,
            positives,
            window=tuple(config["window"]),
            per_positive=1,
            index=config["index"],
            nlist=config.get("nlist", 1024),
            nprobe=config.get("nprobe", 16),
            shard=config["shard"],
            block_size=config["block_size"],
            seed=0,
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return config | {
        "queries": n_q,
        "documents": sizes["docs"],
        "indexed_documents": stats.indexed_documents,
        "negatives": len(frame),
        "seconds": round(seconds, 2),
        "queries_per_s": round(n_q / seconds, 1),
        "cpu_seconds": round(cpu_seconds, 2),
        "queries_per_cpu_s": round(n_q / cpu_seconds, 1),
        "loaded_rss_mb": round(rss.start_mb, 1),
        "peak_rss_mb": round(rss.peak_mb, 1),
        "mining_rss_mb": round(rss.peak_mb - rss.start_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="append", choices=sorted(SCALES), help="repeatable; default small")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results = []
    for scale in args.scale or ["small"]:
        for config in configs(scale):
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(config)],
                check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            if args.out:  # after every configuration: a long run keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2))
            print(
                f"{scale:6s} {result['name']:42s} {result['queries_per_s']:>8,.0f} q/s "
                f"{result['queries_per_cpu_s']:>8,.0f} q/cpu-s {result['seconds']:>7.1f} s  "
                f"mining RSS {result['mining_rss_mb']:>7.1f} MB "
                f"(peak {result['peak_rss_mb']:.0f} MB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
