"""Training throughput and peak memory of the towers on the ingested logs of $EBR_HOME (docs/benchmarks.md).

Each model trains in a fresh process (so that its peak RSS is its own) for `--epochs` epochs; the baseline in
the same run is the data pipeline alone (batches built, no tower), whose rate bounds training from above.

    EBR_HOME=... python benchmarks/train_throughput.py [--epochs 1] [--out FILE.json] [HYDRA_OVERRIDES...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ebr.models.features import FeatureSet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _features(overrides: list[str]) -> tuple[DictConfig, FeatureSet]:
    from ebr import home
    from ebr.config import load_config
    from ebr.models.features import build_features, split_from_config

    cfg = load_config(["train.trainer.enable_progress_bar=false", *overrides])
    db = home.db_path(cfg.data.dataset)
    return cfg, build_features(db, cfg, split_from_config(db, cfg))


def measure_pipeline(overrides: list[str]) -> dict[str, object]:
    """Batches of the unified tower's inputs, built and discarded: the data pipeline's own rate."""
    from ebr.models.datamodule import TripletDataModule
    from ebr.models.training import build_module

    cfg, features = _features(overrides)
    module, _ = build_module(cfg, features, "unified")
    data = TripletDataModule(
        features,
        [f.name for f in module.query_tower.spec.fields],
        [f.name for f in module.document_tower.spec.fields],
        batch_size=int(cfg.train.batch_size),
        random_negatives=int(cfg.train.random_negatives),
        seed=int(cfg.seed),
    )
    start = time.perf_counter()
    triplets = sum(int(batch["negative_mask"].sum()) for batch in data.train_dataloader())
    seconds = time.perf_counter() - start
    return {
        "model": "data pipeline only (unified inputs)",
        "positives": data.n_pairs,
        "seconds": round(seconds, 2),
        "triplets_per_s": round(triplets / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure_model(name: str, overrides: list[str]) -> dict[str, object]:
    from ebr.models.training import train_tower

    cfg, features = _features(overrides)
    with TemporaryDirectory() as out:
        stats = train_tower(cfg, features, name, Path(out)).stats
    return {
        k: stats[k] for k in ("model", "positives", "epochs", "seconds", "pairs_per_s", "triplets_per_s")
    } | {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": stats["device"],
        "parameters": stats["parameters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", default="text,unified,unified_hnm")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one measurement
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    if args.one:
        result = measure_pipeline(overrides) if args.one == "pipeline" else measure_model(args.one, overrides)
        print(json.dumps(result))
        return
    results = []
    for one in ["pipeline", *args.models.split(",")]:
        cmd = [sys.executable, __file__, "--one", one, "--epochs", str(args.epochs), *args.overrides]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print("\n| model | positives | epochs | seconds | triplets/s | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['model']} | {r['positives']} | {r.get('epochs', 1)} | {r['seconds']} | "
            f"{r['triplets_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
