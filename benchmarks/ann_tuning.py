"""The retrain's ANN tuning on a finished run's data: a baseline tuner against the current one, interleaved.

Loads the run's models and tuning sessions the way the `ensembles-and-ann` step does
(`ebr.steps.ensembles.tuning_inputs`, cached in --workdir), then, per embedding key, tunes with the baseline
(`--baseline-src`: the file of an older ebr/ann/quantize.py, e.g. `git show HEAD:ebr/ann/quantize.py`,
run with the same conf/index settings it knows) and with the current tuner under each `--variant` (index
settings over conf/index/default.yaml), in alternating order per key, on one faiss thread. Reports per key
and variant the seconds, the split of the time (exact KNN, coarse k-means, training, adding, searching) and
the chosen scheme, nprobe, recall@K and scanned share.

    git show HEAD:ebr/ann/quantize.py > /tmp/quantize_before.py
    EBR_HOME=/tmp/home python benchmarks/ann_tuning.py --run-dir RUN --baseline-src /tmp/quantize_before.py \
        --variant default --variant 'opq20:opq_iterations=20' --out /tmp/ann-tuning
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import yaml
from omegaconf import OmegaConf

from ebr import home
from ebr.ann import quantize
from ebr.config import IndexConfig, retrain_defaults
from ebr.retrieval.quantized import unsupported_reason
from ebr.steps.ensembles import index_keys, tuning_inputs
from ebr.steps.features import features_for


def load_inputs(run_dir: Path, workdir: Path) -> Any:
    """The step's tuning inputs for the run (computed once, then read from workdir)."""
    cache = workdir / f"{run_dir.name}-inputs.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    cfg = OmegaConf.load(run_dir / "config.yaml")
    models = {
        name: info
        for step in ("train", "mine")
        for name, info in json.loads((run_dir / step / "done.json").read_text())["models"].items()
    }
    features = features_for(cfg, home.db_path(cfg.data.dataset))
    inputs = tuning_inputs(cfg, features, models)
    workdir.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(inputs))
    return inputs


def parse_variant(text: str, base: IndexConfig) -> tuple[str, IndexConfig]:
    """`name` or `name:key=value,key=value` (values in YAML) over conf/index/default.yaml."""
    name, _, settings = text.partition(":")
    changes = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"--variant {text!r}: index has no setting {key!r}")
        changes[key] = yaml.safe_load(value)
    return name, replace(base, **changes)


def summary(result: Any, seconds: float) -> dict[str, Any]:
    c = result.chosen
    return {
        "seconds": round(seconds, 2),
        "split": {k: round(v, 2) for k, v in getattr(result, "seconds", {}).items()},
        "chosen": f"{c.factory} nprobe {c.nprobe}" if c else None,
        "recall": c.recall if c else None,
        "scanned": c.scanned if c else None,
        "met": result.met,
        "exact": result.exact["recall"],
        "points": len(result.points),
        "stopped": getattr(result, "stopped", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished retrain's runs/<run_id>")
    parser.add_argument("--baseline-src", type=Path, help="an older ebr/ann/quantize.py to compare with")
    parser.add_argument("--variant", action="append", default=[], help="name[:key=value,...] (repeatable)")
    parser.add_argument("--keys", nargs="*", help="embedding keys (default: every key the step tunes)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ebr-ann-tuning"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    inputs = load_inputs(args.run_dir, args.workdir)
    base = retrain_defaults().index
    systems: dict[str, Any] = {}
    if args.baseline_src:
        spec = importlib.util.spec_from_file_location("quantize_baseline", args.baseline_src)
        baseline = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = baseline  # dataclasses look their module up
        spec.loader.exec_module(baseline)
        systems["baseline"] = lambda d, q, t, cfg=base: baseline.tune(d, q, cfg, t)
    for text in args.variant or ["default"]:
        name, cfg = parse_variant(text, base)
        systems[name] = lambda d, q, t, cfg=cfg: quantize.tune(d, q, cfg, t, unservable=unsupported_reason)
    results: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(args.keys or index_keys(inputs.specs)):
        docs, queries = inputs.index_vectors(key)
        order = list(systems) if i % 2 == 0 else list(reversed(systems))  # alternate who goes first
        for name in order:
            start = time.perf_counter()
            result = systems[name](docs, queries, inputs.targets)
            results.setdefault(key, {})[name] = summary(result, time.perf_counter() - start)
            print(key, name, json.dumps(results[key][name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ann_tuning.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| key | system | seconds | chosen | recall@K | exact | % scanned |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for key, per in results.items():
        for name, r in per.items():
            lines.append(
                f"| {key} | {name} | {r['seconds']:.1f} | {r['chosen']} | {r['recall']:.4f} | "
                f"{r['exact']:.4f} | {100 * r['scanned']:.2f}% |"
            )
    totals = {name: sum(per[name]["seconds"] for per in results.values()) for name in systems}
    lines += ["", "Total seconds: " + ", ".join(f"{n} {s:.1f}" for n, s in totals.items())]
    (args.out / "ann_tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
