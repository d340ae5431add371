"""The retrain's data-bound steps on a simulated world: time, throughput and peak memory per step, per runner.

    python benchmarks/world_scale.py --world /tmp/ebr-large/large-s7 --home /tmp/ebr-large/home \
        --runner serial --runner dask --out benchmarks/results/world_scale_large.json [--set KEY=VALUE ...]

Runs the flow's own step functions on the world's logs, in one process: ingestion under the data contracts
(`ebr.ingestion.ingest.ingest_logs`,
skipped when the home's database already holds the world), the held-out split
and features (`ebr.steps.retrain.features_for`), then for each runner (conf/runner: serial, threads, dask = a
two-worker LocalCluster): document and query inference of the unified tower
(`ebr.models.training.embed_documents`,
`embed_queries`) and one validated mining round with offline hard negatives (`ebr.mining.rounds.mine_table`:
positives, easy negatives, ANN top-K per vertical in blocks, mixing, contracts). The tower is the unified
tower at its seeded initialisation: inference and mining cost do not depend on the weights, and training it
on the large world is not what is measured here. Peak RSS is sampled every 10 ms (this process; Dask workers
are separate processes and reported from their own memory). Figures: docs/scaling.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNNERS = {
    "serial": ["runner.kind=serial"],
    "threads": ["runner=local", "runner.kind=threads", "runner.workers=2"],
    "dask": ["runner=dask", "runner.cluster.n_workers=2", "runner.cluster.threads_per_worker=1"],
}


@contextmanager
def measured(results: dict[str, Any], name: str, workers: Any = None):
    """Wall and CPU seconds, and the peak RSS (this process, and Dask workers if given) of the block."""
    process, peak, stop = psutil.Process(), [0, 0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            if workers is not None:
                peak[1] = max(peak[1], sum(p.memory_info().rss for p in workers()))
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    start_rss, start, cpu = process.memory_info().rss, time.perf_counter(), time.process_time()
    thread.start()
    entry: dict[str, Any] = {}
    try:
        yield entry
    finally:
        stop.set()
        thread.join()
        entry |= {
            "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "start_rss_gib": round(start_rss / 2**30, 2),
            "peak_rss_gib": round(max(peak[0], process.memory_info().rss) / 2**30, 2),
        }
        if workers is not None:
            entry["workers_peak_rss_gib"] = round(peak[1] / 2**30, 2)
        results[name] = entry
        print(f"{name}: {json.dumps(entry)}", flush=True)


def rate(entry: dict[str, Any], rows: int) -> None:
    entry |= {"rows": rows, "rows_per_s": round(rows / max(entry["seconds"], 1e-9))}


def child_processes() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a simulated world folder (ebr simulate)")
    parser.add_argument("--home", type=Path, required=True, help="EBR_HOME for the database (reused)")
    parser.add_argument(
        "--runner", action="append", choices=sorted(RUNNERS), help="repeatable (default serial)"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="Hydra override, e.g. mining.hard.index=ivf"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ["EBR_HOME"] = str(args.home.resolve())

    from ebr import home
    from ebr.config import load_config
    from ebr.ingestion.ingest import ingest_logs
    from ebr.models.training import build_module
    from ebr.steps.features import features_for

    report = json.loads((args.world / "report.json").read_text())
    results: dict[str, Any] = {"world": str(args.world), "counts": report["counts"], "overrides": args.set}

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))

    db = home.db_path(home.folder_dataset(args.world))  # the world folder's dataset, as `ebr ingest` names it
    if not db.is_file():
        cfg = load_config(args.set)
        with measured(results, "ingest") as entry:
            ingest = ingest_logs(args.world, db, cfg.ingest, run_id="world-scale")
            entry["rows_loaded"] = sum(t["loaded"] for t in ingest.summary()["tables"].values())
        save()
    features = module = None
    for runner in args.runner or ["serial"]:
        cfg = load_config([*args.set, *RUNNERS[runner]])
        if features is None:
            with measured(results, "features") as entry:
                features = features_for(cfg, db)
                entry |= {"documents": len(features.doc_ids), "sessions": len(features.session_ids)}
            module = build_module(cfg, features, str(cfg.mining.model))[0].eval()
            save()
        run_one(runner, cfg, features, module, db, results)
        save()


def run_one(runner: str, cfg: Any, features: Any, module: Any, db: Path, results: dict[str, Any]) -> None:
    """Inference and one validated mining round with the shards on `runner`."""
    import numpy as np

    from ebr.mining.hard import Embedded
    from ebr.mining.rounds import mine_table
    from ebr.models.training import embed_documents, embed_queries
    from ebr.runners import open_shards

    workers = child_processes if runner == "dask" else None
    with open_shards(cfg.runner) as shards:
        with measured(results, f"{runner}: document inference", workers):
            docs = embed_documents(module, features, shards=shards)
        rate(results[f"{runner}: document inference"], len(docs))

        def embed(session_ids: np.ndarray) -> tuple[Embedded, Embedded]:
            with measured(results, f"{runner}: query inference", workers):
                rows = features.session_rows(session_ids)
                queries = embed_queries(module, features, rows, shards=shards)
            rate(results[f"{runner}: query inference"], len(rows))
            return Embedded(np.asarray(session_ids, np.int64), queries), Embedded(features.doc_ids, docs)

        with measured(results, f"{runner}: mining round", workers) as entry:
            table = mine_table(db, cfg, features.split, 1, embed, shards)
    hard = table.report["hard_negatives"]
    entry |= {
        "counts": table.report["counts"],
        "hard_negative_queries": hard["queries"],
        "hard_negative_seconds": hard["seconds"],
        "hard_negative_queries_per_s": round(hard["queries"] / hard["seconds"], 1),
        "mining_seconds": table.report["mining_seconds"],
        "contract_seconds": table.report["contract_seconds"],
    }
    print(f"{runner}: mining round: {json.dumps(entry)}", flush=True)


if __name__ == "__main__":
    main()
