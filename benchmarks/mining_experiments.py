"""The mining experiments of the paper's §6.1 on the simulated `small` world (docs/benchmarks.md, mining).

Each arm is one override file conf/experiment/mining_<arm>.yaml run through ebr.mining.rounds.run_mining on
the same features; its final model is evaluated by ebr.evaluation.recall (exact KNN recall@K per vertical on
held-out sessions, against clicks and against the simulator's intents). Arms whose round 0 is the random-
negative model reuse the `random` arm's checkpoint (mining.start_from) instead of training it again.
Results are written after every arm; a rerun with the same --out skips the arms already there.

    python benchmarks/mining_experiments.py --home /tmp/ebr-mining --epochs 3 \
        --out benchmarks/results/mining_experiments.json

Arms can run in parallel processes (--arms, one --out each, seeded with the random arm's result) and be
merged with --merge; docs/benchmarks.md (Training-data mining) gives the exact commands used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = [
    "random",
    "random_2x",  # random negatives for twice the epochs: the control of the two transfer arms
    "online_hard",
    "hard_only",
    "mixed_1",
    "mixed_10",
    "mixed_100",
    "mixed_1000",
    "hard_to_easy",
    "easy_to_hard",
    "window_1_100",
    "window_101_500",
    "window_501_1000",
    "hard_positives",
    "clicks_hard_positives",
]


def arm_overrides(arm: str, epochs: int) -> list[str]:
    """The Hydra overrides of an arm: its experiment file (and, for random_2x, twice the epochs)."""
    if arm == "random_2x":
        return ["experiment=mining_random", f"train.epochs={2 * epochs}"]
    return [f"experiment=mining_{arm}"]


def prepare_world(home: Path, scale: str, world_seed: int) -> Path:
    """Simulate and ingest the world into $EBR_HOME/ebr.duckdb unless already there; returns the DB path."""
    from omegaconf import OmegaConf

    from ebr.ingestion.ingest import ingest_logs
    from ebr.simulator.world import simulate

    world = home / "worlds" / f"{scale}-s{world_seed}"
    db = home / "ebr.duckdb"
    if not (world / "schema.json").is_file():
        simulate(scale, world_seed, world)
    if not db.is_file():
        ingest_logs(world, db, OmegaConf.load(ROOT / "conf" / "ingest" / "default.yaml"))
    return db


def recall_rows(report: dict, name: str, ks: tuple[int, ...] = (10, 100)) -> dict[str, dict[str, float]]:
    """recall@K against clicks and intents, per vertical and overall, for the model `name`."""
    out = {}
    for key in ("recall", "recall_intent"):
        if key in report and name in report[key]:
            out[key] = {v: {str(k): r[str(k)] for k in ks} for v, r in report[key][name].items()}
    return out


def run(args: argparse.Namespace) -> list[dict]:
    os.environ["EBR_HOME"] = str(args.home)
    import torch
    from omegaconf import OmegaConf

    from ebr.config import load_config
    from ebr.evaluation.recall import evaluate
    from ebr.mining.rounds import run_mining
    from ebr.models.features import build_features, split_from_config
    from ebr.models.training import load_module
    from ebr.steps.evaluate import load_intents

    torch.set_num_threads(args.threads)
    db = prepare_world(args.home, args.scale, 7)
    common = [
        f"train.epochs={args.epochs}",
        "train.trainer.enable_progress_bar=false",
        f"train.trainer.accelerator={args.accelerator}",
        f"train.torch_threads={args.threads}",
        "eval.baselines=[]",
        "eval.ks=[10,100]",
        *args.override,
    ]
    base = load_config(common)
    split = split_from_config(db, base)
    features = build_features(db, base, split)
    intents = load_intents(args.home / "worlds" / f"{args.scale}-s7" / "ground_truth" / "intents.parquet")

    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {r["arm"]: r for r in results}
    for arm in args.arms or ARMS:
        if arm in done:
            continue
        overrides = [*common, *arm_overrides(arm, args.epochs)]
        cfg = load_config(overrides)
        if cfg.mining.negatives != "random" and "random" in done:
            overrides.append(f"mining.start_from={done['random']['checkpoint']}")
            cfg = load_config(overrides)
        key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
        twin = next((r for r in done.values() if r.get("key") == key), None)
        if twin is not None:  # the same configuration under another name (window 101-500 = hard only)
            done[arm] = twin | {"arm": arm, "same_as": twin["arm"]}
            results.append(done[arm])
            continue
        started = time.perf_counter()
        report = run_mining(cfg, db, args.home / "runs" / f"mining-{arm}", f"mining-{arm}", features)
        module = load_module(Path(report["checkpoint"]))
        if arm == "random":  # the logged incumbent and BM25 as references, once
            cfg = load_config([*overrides, "eval.baselines=[incumbent,bm25]"])
        evaluation = evaluate(cfg, features, {arm: module}, intents)
        result = {
            "arm": arm,
            "key": key,
            "overrides": overrides,
            "checkpoint": report["checkpoint"],
            "stages": [
                {k: s.get(k) for k in ("stage", "counts", "hard_negatives", "mining_seconds", "init_from")}
                | {"training_seconds": (s.get("training") or {}).get("seconds")}
                for s in report["stages"]
            ],
            **recall_rows(evaluation, arm),
            "baselines": {b: recall_rows(evaluation, b) for b in cfg.eval.baselines},
            "sessions": evaluation["sessions"],
            "seconds": round(time.perf_counter() - started, 1),
        }
        results.append(result)
        done[arm] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        all_ = result["recall"]["all"]
        print(
            f"{arm:24s} recall@10 {all_['10']:.4f} recall@100 {all_['100']:.4f} ({result['seconds']} s)",
            flush=True,
        )
    return results


def markdown(results: list[dict], key: str = "recall") -> str:
    """One row per arm: recall@10 and @100 per vertical and overall, and the last mined table's make-up."""
    verticals = ["people", "groups", "events", "all"]
    head = "| arm | " + " | ".join(f"{v} @10 | {v} @100" for v in verticals) + " | positives | easy:hard |"
    lines = [head, "|" + " --- |" * (2 * len(verticals) + 3)]
    for r in results:
        if key not in r:
            continue
        cells = [
            f"{r[key][v]['10']:.4f} | {r[key][v]['100']:.4f}" if v in r[key] else "- | -" for v in verticals
        ]
        counts = r["stages"][-1]["counts"]
        ratio = counts["easy_hard_ratio"]
        mix = "easy only" if counts["hard_negatives"] == 0 else ("hard only" if not ratio else f"{ratio:g}:1")
        lines.append(f"| {r['arm']} | " + " | ".join(cells) + f" | {counts['positives']:,} | {mix} |")
    return "\n".join(lines)


def summary(runs: dict[str, list[dict]], key: str = "recall") -> str:
    """recall@10 / @100 over all verticals per arm: one column pair per run (e.g. per seed), then the mean."""
    names = list(runs)
    by_run = {n: {r["arm"]: r for r in rs} for n, rs in runs.items()}
    head = "| arm | " + " | ".join(f"{n} @10 | {n} @100" for n in names) + " | mean @10 | mean @100 |"
    lines = [head, "|" + " --- |" * (2 * len(names) + 3)]
    for arm in ARMS:
        rows = [by_run[n][arm][key]["all"] for n in names if arm in by_run[n]]
        if len(rows) < len(names):
            continue
        cells = [f"{r['10']:.4f} | {r['100']:.4f}" for r in rows]
        mean = [sum(r[k] for r in rows) / len(rows) for k in ("10", "100")]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {mean[0]:.4f} | {mean[1]:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="EBR_HOME for the world, DB and runs (needed to run arms)")
    parser.add_argument("--scale", default="small", help="the simulated world (tiny for a smoke test)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--accelerator", default="cpu", help="train.trainer.accelerator (cpu, gpu, auto)")
    parser.add_argument("--arms", nargs="*", choices=ARMS, help="a subset of the arms (default: all)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "mining_experiments.json"
    )
    parser.add_argument("--markdown", action="store_true", help="only print the tables of --out")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these result files into --out")
    parser.add_argument("--summary", nargs="+", type=Path, help="all-vertical table of these result files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.summary:
        runs = {p.stem.rsplit("_", 1)[-1]: json.loads(p.read_text()) for p in args.summary}
        print(summary(runs, "recall"), summary(runs, "recall_intent"), sep="\n\n")
        return
    if args.merge:
        merged = {r["arm"]: r for path in args.merge for r in json.loads(path.read_text())}
        results = [merged[a] for a in ARMS if a in merged]
        args.out.write_text(json.dumps(results, indent=2, default=str))
    elif args.markdown:
        results = json.loads(args.out.read_text())
    elif args.home is None:
        parser.error("--home is needed to run the arms")
    else:
        results = run(args)
    print(markdown(results, "recall"), markdown(results, "recall_intent"), sep="\n\n")


if __name__ == "__main__":
    main()
