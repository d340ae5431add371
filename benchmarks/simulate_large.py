"""Generation time and peak memory of the simulator at the large scale, with the small scale as the baseline.

    .venv/bin/python benchmarks/simulate_large.py --out /tmp/ebr-sim-bench [--scales small large] [--seed 7]

Each scale runs in its own process (`ebr.simulator.world.simulate`); the figures are wall time per stage, peak
RSS of the generating process and of its session workers, output size, and throughput. Prints one markdown
table and writes benchmark.json next to the worlds; the figures are in docs/benchmarks.md (Simulator).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_one(scale: str, seed: int, out: Path) -> dict:
    """Generate one world in this process and measure it."""
    from ebr.simulator.world import simulate

    stages: dict[str, float] = {}
    start = time.perf_counter()
    simulate(scale, seed, out, on_stage=lambda name, seconds: stages.__setitem__(name, round(seconds, 1)))
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    c = report["counts"]
    return {
        "scale": scale,
        "seed": seed,
        "wall_s": round(wall, 1),
        "stages_s": stages,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "worker_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "cpu_s": round(
            sum(
                resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            ),
            1,
        ),
        "output_mib": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 1),
        "users": c["users"],
        "friendships": c["friendships"],
        "documents": c["documents"]["total"],
        "sessions": c["sessions"]["total"],
        "impressions": c["impressions"],
        "sessions_per_s": round(c["sessions"]["total"] / stages["sessions"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the worlds and benchmark.json")
    parser.add_argument("--scales", nargs="+", default=["small", "large"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.scales[0], args.seed, args.out)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for scale in args.scales:
        cmd = [sys.executable, __file__, "--child", "--scales", scale, "--seed", str(args.seed),
               "--out", str(args.out / f"{scale}-s{args.seed}")]  # fmt: skip
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (args.out / "benchmark.json").write_text(json.dumps(results, indent=1) + "\n")
    print(
        "| scale | users | documents | sessions | impressions | wall (s) | sessions stage (s) | sessions/s "
        "| CPU (s) | peak RSS (GiB) | worker peak RSS (GiB) | output (MiB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['scale']} | {r['users']:,} | {r['documents']:,} | {r['sessions']:,} "
            f"| {r['impressions']:,} | {r['wall_s']} | {r['stages_s']['sessions']} | {r['sessions_per_s']:,} "
            f"| {r['cpu_s']} | {r['peak_rss_gib']} | {r['worker_peak_rss_gib']} | {r['output_mib']} |"
        )
    for r in results:
        print(f"{r['scale']} stages (s): " + ", ".join(f"{k} {v}" for k, v in r["stages_s"].items()))


if __name__ == "__main__":
    main()
