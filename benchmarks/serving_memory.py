"""Memory of N processes serving one version: memory-mapped snapshot files against full loads, same run.

N = 1, 2, 4 worker processes each open the 1M-document engine folder of benchmarks/engine_data.py through
`Engine.open` (read-only, over an empty state folder of this run: the cached folder is never written), with
`engine.store.mmap` true ("mmap": arrays and faiss inverted lists mapped from the files, shared through the
page cache) or false ("full": every file read into the process, the engine before memory-mapping). Each
worker answers the same queries through `Engine.search` (top-10 `(nn bench :k 10 :nprobe 16)` and hybrid
`(and (term region:rX) (nn bench :radius 2 :nprobe 16))`, limit 10), then the total PSS and RSS of the N
workers are read from /proc/<pid>/smaps_rollup; then each worker touches every page of the index (a scan of
every list, a sum over every array) and they are read again (the worst case: all of the index resident).
PSS splits each shared page among the processes mapping it, so the N workers' PSS is the memory they cost
together. "index" is the growth over the worker's own PSS before it opened the engine (Python, numpy and
faiss loaded). The two groups run one after the other per N (mmap first, then full), so that neither shares
library pages with the other.

For N = `--lifecycle-workers` (4) the mmap and full workers are shared writers over a state folder of their
own (`engine.store.shared`), and the run goes on: one realtime add in the first worker and a search in every
worker (each replays it: the mapped ones copy the faiss lists in), PSS; a compaction in the first worker
(writing a 1M-document generation into that state folder) and a search and a touch in every worker (each
moves to the new generation, mapped again), PSS.

With `--head-tree DIR` a third mode, "head", runs the workers on the `ebr` package of DIR (the code before
memory-mapping, which always reads in full) in the same run. Open time is `Engine.open`'s wall time in each
worker; query latency compares one worker per mode answering the same queries, their order rotating query
by query (p50, ms; the answers must be equal).

    OPENBLAS_NUM_THREADS=1 python benchmarks/serving_memory.py --head-tree /tmp/head
    # /tmp/head: `git show <before>:<f> > /tmp/head/<f>` for each f of `git ls-files ebr conf`, <before>
    # the commit before memory-mapping
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from engine_data import KEY, add_data_args, load

WORKER = """
import json, sys, time
from dataclasses import replace
from pathlib import Path
import faiss, numpy as np
from ebr.config import engine_defaults
from ebr.retrieval.query import parse
from ebr.retrieval.store import Engine
faiss.omp_set_num_threads(1)
folder, state, mmap = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "mmap"
store = engine_defaults().store
if hasattr(store, "mmap"):  # the code of --head-tree has no such setting: it always reads in full
    store = replace(store, mmap=mmap)
queries = np.load(sys.argv[4])
print(json.dumps({"ready": True}), flush=True)
engine = None
for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "open":
        started = time.perf_counter()
        shared = command["writable"]  # several writing workers over one state (a state of this run)
        config = replace(store, shared=True, compact_after_records=0) if shared else store
        engine = Engine.open(folder, state, config, writable=shared)
        out = {"open_s": time.perf_counter() - started, "mapped": getattr(engine.index, "mapped", False)}
    elif command["op"] == "search":
        started = time.perf_counter()
        hits = engine.search(parse(command["expr"]), {command["key"]: queries[command["row"]]}, limit=10)
        out = {"ms": 1000 * (time.perf_counter() - started), "hits": hits.doc_ids.tolist()}
    elif command["op"] == "touch":  # every page of the index resident: all lists scanned, all arrays read
        nlist = engine.index.fields[command["key"]].nlist
        engine.search(parse(f"(nn {command['key']} :k 10 :nprobe {nlist})"), {command["key"]: queries[0]})
        names = ("doc_ids", "_postings", "_forward", "_forward_offsets")
        arrays = [getattr(engine.index, name) for name in names]
        total = sum(float(np.sum(a, dtype=np.float64)) for a in arrays)
        del arrays  # no reference may keep this generation's index alive after a compaction
        out = {"touched": total > 0}
    elif command["op"] == "change":  # one realtime add (every other worker replays it at its next search)
        embeddings = {command["key"]: queries[0].tolist()}
        engine.apply([{"op": "add", "doc_id": 10**9, "terms": ["vertical:groups"], "embeddings": embeddings}])
        out = {"mapped": engine.index.mapped}
    elif command["op"] == "compact":
        started = time.perf_counter()
        out = {"generation": engine.compact(), "compact_s": time.perf_counter() - started}
    print(json.dumps(out), flush=True)
"""


def memory(pid: int) -> dict[str, int]:
    """Pss and Rss of a process, in bytes (/proc/<pid>/smaps_rollup)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Pss", "Rss"):
            out[name.lower()] = int(value.split()[0]) * 1024
    return out


class Worker:
    def __init__(self, folder: Path, state: Path, mode: str, queries: Path, tree: Path | None = None):
        """A worker process; `tree`: run it with the `ebr` package of that source tree instead."""
        self.mode = mode
        env = dict(os.environ, PYTHONPATH=str(tree)) if tree is not None else None
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(folder), str(state), mode, str(queries)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.read()

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a {self.mode} worker died (exit {self.process.wait()})")
        return json.loads(line)

    def __call__(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def memory(self) -> dict[str, int]:
        return memory(self.process.pid)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=120)


def requests(n: int) -> list[tuple[str, int]]:
    """(expression, query row) pairs, top-10 and hybrid (a 1% region filter) alternating."""
    out = []
    for row in range(n):
        if row % 2:
            out.append((f"(and (term region:r{row % 100}) (nn {KEY} :radius 2 :nprobe 16))", row))
        else:
            out.append((f"(nn {KEY} :k 10 :nprobe 16)", row))
    return out


def group(
    folder: Path,
    state: Path,
    mode: str,
    n: int,
    queries: Path,
    asked: list[tuple[str, int]],
    tree: Path | None,
    lifecycle: bool,
) -> dict:
    """N workers of one mode: open, answer the queries, measure; touch every page, measure again. With
    `lifecycle` (shared writable workers over `state`), then: one realtime change in the first worker, a
    search in every worker (which replays it), measure; a compaction in the first, a search in every worker
    (which moves to the new generation), touch, measure."""
    workers = [Worker(folder, state, mode, queries, tree if mode == "head" else None) for _ in range(n)]
    extra: dict[str, Any] = {}
    try:
        before = [w.memory() for w in workers]
        opened = [w(op="open", writable=lifecycle) for w in workers]
        for expr, row in asked:
            for w in workers:
                w(op="search", expr=expr, key=KEY, row=row)
        served = [w.memory() for w in workers]
        for w in workers:
            w(op="touch", key=KEY)
        touched = [w.memory() for w in workers]
        if lifecycle:
            workers[0](op="change", key=KEY)
            for w in workers:
                w(op="search", expr=asked[0][0], key=KEY, row=0)
            extra["pss_changed_mib"] = total([w.memory() for w in workers], "pss")
            extra["compact_s"] = round(workers[0](op="compact")["compact_s"], 2)
            for w in workers:
                w(op="search", expr=asked[0][0], key=KEY, row=0)
                w(op="touch", key=KEY)
            extra["pss_compacted_touched_mib"] = total([w.memory() for w in workers], "pss")
    finally:
        for w in workers:
            w.close()
    return {
        "mode": mode,
        "workers": n,
        "mapped": all(o["mapped"] for o in opened),
        "open_s_median": round(statistics.median(o["open_s"] for o in opened), 3),
        "pss_mib": total(served, "pss"),
        "rss_mib": total(served, "rss"),
        "index_pss_mib": round(total(served, "pss") - total(before, "pss"), 1),
        "pss_touched_mib": total(touched, "pss"),
        "rss_touched_mib": total(touched, "rss"),
        "index_pss_touched_mib": round(total(touched, "pss") - total(before, "pss"), 1),
        **extra,
    }


def total(sample: list[dict[str, int]], what: str) -> float:
    """The sum of one figure over the workers, in MiB."""
    return round(sum(m[what] for m in sample) / 2.0**20, 1)


def latency(
    folder: Path, state: Path, queries: Path, asked: list[tuple[str, int]], rounds: int, tree: Path | None
) -> dict:
    """p50 per query of one worker per mode, in a rotating order query by query (the same answers)."""
    modes = ("mmap", "full", "head") if tree is not None else ("mmap", "full")
    workers = {mode: Worker(folder, state, mode, queries, tree if mode == "head" else None) for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in workers}
    try:
        for w in workers.values():
            w(op="open", writable=False)
        for expr, row in asked[: min(50, len(asked))]:  # warm-up
            for w in workers.values():
                w(op="search", expr=expr, key=KEY, row=row)
        for r in range(rounds):
            for i, (expr, row) in enumerate(asked):
                shift = (i + r) % len(modes)
                order = modes[shift:] + modes[:shift]
                answers = {}
                for mode in order:
                    out = workers[mode](op="search", expr=expr, key=KEY, row=row)
                    times[mode].append(out["ms"])
                    answers[mode] = out["hits"]
                if any(a != answers["mmap"] for a in answers.values()):
                    raise AssertionError(f"{expr} row {row}: the modes' answers differ")
    finally:
        for w in workers.values():
            w.close()
    return {
        mode: {
            "p50_ms": round(float(np.percentile(t, 50)), 4),
            "p90_ms": round(float(np.percentile(t, 90)), 4),
        }
        for mode, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_args(parser)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--n-queries", type=int, default=200, help="queries each worker answers")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument(
        "--lifecycle-workers",
        type=int,
        default=4,
        help="for this N (mmap and full), also a realtime change and a compaction (0: none)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--head-tree",
        type=Path,
        default=None,
        help="a source tree of the code before memory-mapping (its ebr/ and conf/), run as a third mode "
        "'head', e.g. made with git show HEAD:<file> for every file of ebr/ and conf/",
    )
    args = parser.parse_args()
    folder = args.workdir / "engine"
    if not (folder / "meta.json").is_file():
        load(args)  # builds and caches the corpus (a cached folder is only read)
    n_queries = min(args.n_queries, len(np.load(args.workdir / "queries.npy", mmap_mode="r")))
    asked = requests(n_queries)
    results: dict[str, Any] = {"folder": str(folder), "queries": n_queries, "groups": []}
    with tempfile.TemporaryDirectory(prefix="ebr-serving-memory-") as tmp:
        queries = Path(tmp) / "queries.npy"
        np.save(queries, np.load(args.workdir / "queries.npy")[:n_queries])
        state = Path(tmp) / "state"  # empty: a read-only engine over generation 0, never written
        started = time.perf_counter()
        for n in (int(x) for x in args.workers.split(",")):
            for mode in ("mmap", "full", "head") if args.head_tree else ("mmap", "full"):
                lifecycle = n == args.lifecycle_workers and mode != "head"  # head has no shared writers
                own_state = Path(tmp) / f"state-{mode}-{n}" if lifecycle else state
                row = group(folder, own_state, mode, n, queries, asked, args.head_tree, lifecycle)
                results["groups"].append(row)
                print(json.dumps(row), flush=True)
        results["latency"] = latency(folder, state, queries, asked, args.latency_rounds, args.head_tree)
        print(json.dumps({"latency": results["latency"]}), flush=True)
        results["wall_s"] = round(time.perf_counter() - started, 1)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
