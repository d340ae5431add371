"""Filtered top-10: the engine against raw faiss with a cached filter bitmap, and the engine's previous code.

For each filter selectivity (0.1%, 1%, 10%) every query gets a random filter term F of that level; the exact
answer is the top 10 of F's documents by true cosine similarity (float vectors). Compared, one thread, in one
process, query by query (engine and faiss alternate which goes first, so that each follows the baseline of
the query before as often; the baseline goes last and finds the probed lists in cache, which favours it):
  engine     `execute` (the code `Engine.search` / `SearchService` run) on
             (and (term F) (nn bench :radius R :nprobe p)), limit 10, ordered by score;
  baseline   the same through the executor of another revision (`--baseline-rev`, default HEAD: the code
             before this change), loaded from `git show REV:ebr/retrieval/executor.py` into a temp module;
  faiss      `index.search` top-10 with SearchParametersIVF(nprobe=p, sel=IDSelectorBitmap(F)), the bitmap
             and the parameters built once per filter value (outside the timings).
One untimed pass warms every cache (the engine's filter cache, faiss's bitmaps, the CPU caches) before the
timed passes. Recall@10 of each is against the exact filtered top 10; the engine's ratio is its p50 over
faiss's at the same nprobe (with radius 2 both answer from the same candidates: the same recall).

    OPENBLAS_NUM_THREADS=1 python benchmarks/engine_filtered.py   # docs/benchmarks.md (Retrieval engine)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from engine_data import KEY, LEVELS, SELECTIVITY, add_data_args, filter_term, load
from engine_hybrid import exact_filtered_top, recall
from engine_nn import latency_stats

from ebr.config import engine_defaults
from ebr.retrieval.executor import execute
from ebr.retrieval.query import parse_cached

LIMITS = replace(engine_defaults().limits, max_nprobe=4096)
ROOT = Path(__file__).resolve().parent.parent


def baseline_execute(rev: str) -> Callable:
    """`execute` of ebr/retrieval/executor.py at git revision `rev` (read with `git show`), as a module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:ebr/retrieval/executor.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="ebr-baseline-")) / "executor_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("executor_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["executor_baseline"] = module
    spec.loader.exec_module(module)
    return module.execute


def faiss_params(index, posting: np.ndarray, nprobe: int) -> tuple:
    """The raw faiss side's parameters for one filter value: a bitmap of its postings and a selector."""
    bits = np.zeros(index.internal_count, dtype=bool)
    bits[posting] = True
    bitmap = np.packbits(bits, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    return faiss.SearchParametersIVF(nprobe=nprobe, sel=selector), selector, bitmap


def compare(
    data, level: str, nprobes: list[int], radius: float, n_queries: int, repeats: int, seed: int, old
):
    index = data.index
    nn_index = index.fields[KEY].index
    rng = np.random.default_rng(seed)
    prefix, div = LEVELS[level]
    cities = rng.integers(1000, size=n_queries)
    terms = [filter_term(level, int(c)) for c in cities]
    queries = data.queries[np.arange(n_queries) % len(data.queries)]
    members = {
        t: np.flatnonzero(data.cities // div == int(t.split(":")[1][len(prefix) :])) for t in set(terms)
    }
    truth = [exact_filtered_top(data, q, members[t], 10) for q, t in zip(queries, terms, strict=True)]
    rows = []
    for nprobe in nprobes:
        params: dict[str, tuple] = {}

        def raw(q: np.ndarray, term: str, nprobe=nprobe, params=params) -> np.ndarray:
            ids = nn_index.search(q[None, :], 10, params=params[term][0])[1][0]
            return ids[ids >= 0]

        def engine(q: np.ndarray, term: str, run: Callable = execute, nprobe=nprobe) -> np.ndarray:
            expr = f"(and (term {term}) (nn {KEY} :radius {radius} :nprobe {nprobe}))"
            return run(index, parse_cached(expr, LIMITS), {KEY: q}, limit=10).doc_ids

        systems = {"engine": engine, "faiss": raw}
        if old is not None:
            systems["baseline"] = lambda q, term, nprobe=nprobe: engine(q, term, old, nprobe)
        for term in set(terms):
            params[term] = faiss_params(index, index.posting(term), nprobe)
        times: dict[str, list[float]] = {name: [] for name in systems}
        recalls: dict[str, list[float]] = {name: [] for name in systems}
        same = 0
        names = list(systems)
        for rep in range(repeats + 1):  # pass 0 warms the caches, untimed
            for i, (q, term, want) in enumerate(zip(queries, terms, truth, strict=True)):
                got = {}
                pair = ["engine", "faiss"] if i % 2 == 0 else ["faiss", "engine"]
                for name in pair + names[2:]:  # the baseline last: it finds the probed lists in cache
                    t0 = time.perf_counter()
                    ids = systems[name](q, term)
                    elapsed = time.perf_counter() - t0
                    got[name] = ids.tolist()
                    if rep:
                        times[name].append(elapsed)
                if rep:
                    for name in names:
                        recalls[name].append(recall(got[name], want))
                    same += set(got["engine"]) == set(got["faiss"])
        row = {"level": level, "selectivity": SELECTIVITY[level], "nprobe": nprobe, "radius": radius}
        for name in names:
            row[name] = {"recall_at_10": float(np.mean(recalls[name])), **latency_stats(times[name])}
        row["ratio_p50"] = row["engine"]["p50_ms"] / row["faiss"]["p50_ms"]
        if old is not None:
            row["baseline_ratio_p50"] = row["baseline"]["p50_ms"] / row["faiss"]["p50_ms"]
            row["speedup_p50"] = row["baseline"]["p50_ms"] / row["engine"]["p50_ms"]
        row["same_ids"] = same / (repeats * n_queries)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| filter | nprobe | faiss recall / p50 / p99 ms | engine recall / p50 / p99 ms | engine / faiss "
        "| baseline recall / p50 / p99 ms | baseline / faiss | same ids |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, e = r["faiss"], r["engine"]
        b = r.get("baseline")
        base = f"{b['recall_at_10']:.3f} / {b['p50_ms']:.3f} / {b['p99_ms']:.3f}" if b else "-"
        base_ratio = f"{r['baseline_ratio_p50']:.2f}x" if b else "-"
        lines.append(
            f"| {r['level']} ({r['selectivity']:.1%}) | {r['nprobe']} "
            f"| {f['recall_at_10']:.3f} / {f['p50_ms']:.3f} / {f['p99_ms']:.3f} "
            f"| {e['recall_at_10']:.3f} / {e['p50_ms']:.3f} / {e['p99_ms']:.3f} | {r['ratio_p50']:.2f}x "
            f"| {base} | {base_ratio} | {r['same_ids']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--filtered-queries", type=int, default=200, help="queries per selectivity")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--radius", type=float, default=2.0, help="the nn's radius (2: no radius cut)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the queries")
    parser.add_argument("--baseline-rev", default="HEAD", help="git revision of the baseline executor")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline executor")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    data = load(args)
    old = None if args.no_baseline else baseline_execute(args.baseline_rev)
    started = os.getloadavg()
    rows = []
    for level in args.levels:
        rows += compare(
            data, level, args.nprobe, args.radius, args.filtered_queries, args.repeats, args.seed, old
        )
    out = {
        "args": vars(args) | {"workdir": str(args.workdir)},
        "load_average": {"start": started, "end": os.getloadavg()},
        "rows": rows,
    }
    out_path = Path(os.environ.get("EBR_BENCH_OUT", tempfile.gettempdir())) / "engine_filtered.json"
    out_path.write_text(json.dumps(out, indent=2))
    print(markdown(rows))
    print(f"load average 1/5/15 min: start {started}, end {out['load_average']['end']}")


if __name__ == "__main__":
    main()
