"""Cold start of `ebr search`: N fresh processes against the served version of a home, their wall times.

    EBR_HOME=/tmp/ebr_small python benchmarks/search_cold.py [-n 10] [--breakdown] [-- SEARCH ARGS...]

Each run is a new Python process (`ebr search` as a console command runs it: its imports, the config, the
version's checksums, the engine, the query tower, the query, the output); the default search is
`--query-text "john smith" --vertical people`. Prints each run's seconds, then p50 and p90. The operating
system's file cache is left as it is (the first run warms it: it is not counted). `--breakdown` adds one run
under `python -X importtime` (its modules' own times summed per top-level package) and the seconds of each
phase of a search (imports, engine config, the default dataset, opening the version, the query tower, the
query) measured inside one more process (the query phase embeds the query again, with the loaded tower).
Figures: docs/benchmarks.md#ebr-search-cold-start. To time another copy of the code with the same
environment, run the script from outside the project folder (`-c` puts the current folder first on
sys.path) with PYTHONPATH pointing at that copy.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

DEFAULT_SEARCH = ["--query-text", "john smith", "--vertical", "people"]
CLI = "import sys; from ebr.cli import main; sys.exit(main())"
PHASES = """
import sys, time
t0 = time.perf_counter()
from ebr.cli.datasets import resolve_dataset
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchRequest, SearchService
t1 = time.perf_counter()
config = load_engine_config([])
t2 = time.perf_counter()
dataset = resolve_dataset(sys.argv[3] or None)
t3 = time.perf_counter()
service = SearchService.open_served(config, writable=False, dataset=dataset)
t4 = time.perf_counter()
request = SearchRequest(vertical=sys.argv[1] or None, query_text=sys.argv[2])
service.query_vectors([service.expression(request)], [request])
t5 = time.perf_counter()
hits = service.search(request).hits
t6 = time.perf_counter()
service.close()
names = ("imports", "engine config", "dataset", "open the version", "query tower + embedding", "query")
for name, a, b in zip(names, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
    print(f"{name:<26}{b - a:7.3f} s")
print(f"{'(matches)':<26}{hits.total:7d}")
"""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (linear interpolation)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_once(args: list[str]) -> float:
    """Seconds of one `ebr search` process; a failing search stops the benchmark with its error."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CLI, "search", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"ebr search {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return seconds


def import_breakdown(args: list[str]) -> dict[str, float]:
    """Import seconds of one `ebr search` per top-level package (python -X importtime: each module's own
    time, summed over the modules of the package, so that the figures add up)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CLI, "search", *args], capture_output=True, text=True
    )
    totals: dict[str, float] = defaultdict(float)
    for line in out.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            totals[match.group(2).split(".")[0].lstrip("_")] += int(match.group(1)) / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=10, help="timed runs (after one untimed warm-up run)")
    parser.add_argument("--breakdown", action="store_true", help="also imports per package and phase times")
    parser.add_argument("search", nargs="*", help="ebr search arguments (after --)")
    ns = parser.parse_args()
    args = ns.search or DEFAULT_SEARCH
    print(f"EBR_HOME={os.environ.get('EBR_HOME', '(default)')} ebr search {' '.join(args)}")
    run_once(args)  # warm-up: the file cache
    times = [run_once(args) for _ in range(ns.n)]
    print("runs (s): " + " ".join(f"{t:.2f}" for t in times))
    print(f"p50 {percentile(times, 0.5):.2f} s  p90 {percentile(times, 0.9):.2f} s  (n={ns.n})")
    if ns.breakdown:
        print("imports, seconds per top-level package (one run, each module's own time):")
        for name, seconds in list(import_breakdown(args).items())[:12]:
            print(f"  {name:<24}{seconds:7.3f} s")
        given = [
            args[args.index(o) + 1] if o in args else "" for o in ("--vertical", "--query-text", "--dataset")
        ]
        print("phases of one search (one process):")
        phases = subprocess.run([sys.executable, "-c", PHASES, *given], capture_output=True, text=True)
        print(phases.stdout.rstrip() or phases.stderr.strip())


if __name__ == "__main__":
    main()
