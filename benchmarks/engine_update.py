"""Index memory per document, build time, load time and realtime update throughput of the engine.

Memory: the bytes of every array of the index (postings, forward index, documents, PQ codes + ids, cluster of
each id) and the resident-memory growth of a fresh process that loads the engine folder (which adds faiss's
hashtable direct map and Python objects). Updates go through `Engine.apply` into a write-ahead log in a
temporary state folder: one change per fsync, then batches; then compaction and reopening (log replay).

    OPENBLAS_NUM_THREADS=1 python benchmarks/engine_update.py   # docs/benchmarks.md (Retrieval engine)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from engine_data import KEY, add_data_args, clustered, load

from ebr.config import engine_defaults
from ebr.retrieval.store import Engine

LOAD_RSS = """
import os, sys, psutil
process = psutil.Process(os.getpid())
import faiss, numpy
from ebr.retrieval.index import EngineIndex
before = process.memory_info().rss
index = EngineIndex.load(__import__("pathlib").Path(sys.argv[1]))
print(process.memory_info().rss - before)
"""


def changes(
    kind: str, start: int, count: int, rng: np.random.Generator, d: int, existing: np.ndarray
) -> list:
    if kind == "add":
        vectors = clustered(rng, np.eye(d, dtype=np.float32), count, spread=1.0)
        return [
            {
                "op": "add",
                "doc_id": 10**9 + start + i,
                "terms": ["vertical:people", f"location:c{i % 1000}"],
                "embeddings": {KEY: vectors[i].tolist()},
            }
            for i in range(count)
        ]
    if kind == "update":
        return [
            {"op": "update", "doc_id": int(d_), "terms": ["vertical:groups", "location:c1"]}
            for d_ in existing[start : start + count]
        ]
    return [{"op": "delete", "doc_id": int(d_)} for d_ in existing[start : start + count]]


def throughput(engine: Engine, batches: list[list]) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        engine.apply(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--single", type=int, default=500, help="changes applied one per fsync")
    parser.add_argument("--batched", type=int, default=20_000, help="changes applied in batches")
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--state-dir", type=Path, default=None, help="log folder [default: a temp folder]")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    out: dict = {"args": vars(args) | {"workdir": str(args.workdir), "state_dir": str(args.state_dir)}}
    memory = data.index.memory_bytes()
    rss = int(
        subprocess.run(
            [sys.executable, "-c", LOAD_RSS, str(args.workdir / "engine")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    out["memory"] = {
        "arrays_bytes": memory,
        "arrays_per_doc": sum(memory.values()) / args.n,
        "rss_per_doc": rss / args.n,
        "files_per_doc": _folder_bytes(args.workdir / "engine") / args.n,
    }
    out["build"] = data.build["timings"]
    rng = np.random.default_rng(args.seed)
    existing = rng.permutation(data.index.doc_ids)
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="ebr-engine-state-"))
    try:
        t0 = time.perf_counter()
        engine = Engine.open(
            args.workdir / "engine", state, replace(engine_defaults().store, compact_after_records=0)
        )
        out["open_s"] = time.perf_counter() - t0
        rates = {}
        rates["add, 1 per fsync"] = throughput(
            engine, [[c] for c in changes("add", 0, args.single, rng, args.d, existing)]
        )
        added = args.single
        for kind in ("add", "update", "delete"):
            offset = added if kind == "add" else {"update": 0, "delete": args.batched}[kind]
            batch = changes(kind, offset, args.batched, rng, args.d, existing)
            rates[f"{kind}, batches of {args.batch_size}"] = throughput(
                engine, [batch[i : i + args.batch_size] for i in range(0, len(batch), args.batch_size)]
            )
        out["updates_per_s"] = rates
        out["log_records"] = engine.log_records
        t0 = time.perf_counter()
        engine.close()
        reopened = Engine.open(
            args.workdir / "engine", state, replace(engine_defaults().store, compact_after_records=0)
        )
        out["reopen_with_replay_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        reopened.compact()
        out["compact_s"] = time.perf_counter() - t0
        reopened.close()
    finally:
        if args.state_dir is None:
            shutil.rmtree(state, ignore_errors=True)
    (args.workdir / "engine_update.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
