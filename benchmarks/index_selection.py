"""Index selection (§4.3, docs/selection.md): index size, build time and recall per vertical, for no predicate
against two predicates per vertical, on a finished retrain run.

    EBR_HOME=/tmp/home python benchmarks/index_selection.py [--run RUN_ID] [--repeats 5] [--out results.json]

For every variant the run's `serving` step (ebr/steps/serving.py: index selection, calibration through the
engine, the staged candidate) is run again into a temporary folder from the run's trained models and tuned
indexes, with `index_selection.verticals` set to the variant's predicates. Measured on the candidate:
  - per vertical: documents in the (nn) fields, and the bytes their codes take (code size + 8-byte id each);
    the nn field files' bytes in all;
  - the engine build time (build_engine on the candidate's files, terms and nn fields, median of --repeats,
    the variants interleaved in every repeat);
  - recall@K (K = the gate's k of the vertical) of the evaluation sessions (never trained, tuned nor gated
    on) through SearchService.search_many with each vertical's served expression, and the mean time per
    request of that batch; and the share of those sessions' clicked documents the predicate selects (recall
    through the nn part can only reach those; term matching still finds the others).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq
from omegaconf import OmegaConf, open_dict

from ebr import home
from ebr.config import load_config
from ebr.evaluation.gate import GateConfig
from ebr.retrieval.build import build_engine
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.quantized import NNField
from ebr.retrieval.service import SearchService
from ebr.steps.features import features_for
from ebr.steps.resume import finished
from ebr.steps.serving import choose_serving
from ebr.steps.sessions import session_requests

ACTIVE = (
    "SELECT d.doc_id FROM documents d JOIN users u USING (user_id) "
    "WHERE d.vertical = 'people' AND u.is_active"
)
RECENT = (
    "SELECT doc_id FROM documents WHERE vertical = 'people' AND user_id IN (SELECT user_id FROM sessions "
    "WHERE ts >= (SELECT max(ts) FROM sessions) - INTERVAL 30 DAY)"
)
UPCOMING = (
    "SELECT doc_id FROM documents WHERE vertical = 'events' AND event_time >= (SELECT max(ts) FROM sessions)"
)
NEXT_MONTH = (
    "SELECT doc_id FROM documents WHERE vertical = 'events' AND event_time >= (SELECT max(ts) FROM sessions) "
    "AND event_time < (SELECT max(ts) FROM sessions) + INTERVAL 30 DAY"
)
POPULAR = "SELECT doc_id FROM documents WHERE vertical = 'groups' AND popularity > 10"
VERY_POPULAR = "SELECT doc_id FROM documents WHERE vertical = 'groups' AND popularity > 30"
VARIANTS: dict[str, dict[str, str]] = {
    "none": {},
    "A": {"people": ACTIVE, "events": UPCOMING, "groups": POPULAR},
    "B": {"people": RECENT, "events": NEXT_MONTH, "groups": VERY_POPULAR},
}


def latest_run(dataset: str) -> str:
    runs = sorted(p.name for p in home.runs_dir(dataset).iterdir() if finished(p, "serving"))
    if not runs:
        raise SystemExit(f"no run of dataset {dataset} has a finished serving step")
    return runs[-1]


def stage(
    cfg: Any, run_dir: Path, features: Any, predicates: dict[str, str], out: Path, serve: str
) -> dict[str, Any]:
    variant = cfg.copy()
    with open_dict(variant):
        variant.index_selection.verticals = predicates
        variant.serving.serve = serve
    models = {
        n: i for s in ("train", "mine") for n, i in (finished(run_dir, s) or {}).get("models", {}).items()
    }
    out.mkdir(parents=True)
    return choose_serving(
        variant,
        home.db_path(cfg.data.dataset),
        features,
        models,
        finished(run_dir, "ensembles"),
        run_dir / "ensembles",
        out,
        run_dir.name,
        evaluation=finished(run_dir, "evaluate"),
    )


def build_seconds(candidate: Path, trained: dict[str, faiss.Index], scratch: Path) -> float:
    """One engine build from the candidate's files (build_engine writes into candidate/engine: a copy)."""
    copy = scratch / "version"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(candidate, copy, ignore=shutil.ignore_patterns("engine", "towers"))
    started = time.perf_counter()
    build_engine(copy / "engine", trained)
    return time.perf_counter() - started


def measure(candidate: Path, sessions: dict[str, Any], gate: GateConfig, dataset: str) -> dict[str, Any]:
    manifest = json.loads((candidate / "manifest.json").read_text())
    selection = manifest["index_selection"]
    nn_files = sorted((candidate / "engine" / "nn").glob("*.faiss"))
    out: dict[str, Any] = {"nn_bytes": sum(f.stat().st_size for f in nn_files), "verticals": {}}
    doc_ids = np.load(candidate / "doc_ids.npy")
    documents = pq.read_table(candidate / "documents.parquet", columns=["doc_id", "nn_indexed"]).to_pandas()
    selected = set(documents.loc[documents["nn_indexed"], "doc_id"].tolist())
    config = load_engine_config()
    service = SearchService.open(candidate, config, writable=False, warm=True, dataset=dataset)
    try:
        for vertical, counts in selection["verticals"].items():
            key = manifest["serving"]["verticals"][vertical]["key"]
            field = NNField.read(key, candidate / "engine" / "nn" / f"{key}.faiss")
            row: dict[str, Any] = dict(counts) | {
                "key": key,
                "code_bytes": counts["indexed"] * (int(field.ivf.invlists.code_size) + 8),
            }
            if vertical in sessions:
                k = gate.verticals[vertical].k
                s = sessions[vertical]
                template = manifest["serving"]["verticals"][vertical]
                service.search_many(s.requests[:8])  # warm
                started = time.perf_counter()
                responses = service.search_many(s.requests)
                row["ms_per_request"] = 1000 * (time.perf_counter() - started) / len(s.requests)
                nn_only = f"(and (term vertical:{vertical}) (nn {key} :k {k} :nprobe {template['nprobe']}))"
                nn_hits = [
                    set(r.hits.doc_ids[:k].tolist())
                    for r in service.search_many([replace(q, expr=nn_only) for q in s.requests])
                ]
                row["nn_recall"] = float(
                    np.mean([np.isin(t, list(h)).mean() for t, h in zip(s.targets, nn_hits, strict=True)])
                )
                hits = [set(r.hits.doc_ids[:k].tolist()) for r in responses]
                row["k"] = k
                row["sessions"] = len(s.requests)
                row["recall"] = float(
                    np.mean([np.isin(t, list(h)).mean() for t, h in zip(s.targets, hits, strict=True)])
                )
                clicks = np.concatenate([np.asarray(t) for t in s.targets])
                row["clicks_selected"] = float(np.isin(clicks, list(selected)).mean())
                row["expr"] = template["expr"]
            out["verticals"][vertical] = row
    finally:
        service.close()
    out["documents"] = int(len(doc_ids))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="default: the only dataset of EBR_HOME")
    parser.add_argument("--run", default=None, help="a run id with a finished serving step (default: latest)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--serve", default="best", help="serving.serve: best, or one retriever for all")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    faiss.omp_set_num_threads(1)
    dataset = args.dataset or home.datasets()[0]
    run_id = args.run or latest_run(dataset)
    run_dir = home.runs_dir(dataset) / run_id
    # the run's resolved config over today's defaults (groups added since the run get their defaults)
    cfg = OmegaConf.merge(load_config(), OmegaConf.load(run_dir / "config.yaml"))
    db_path = home.db_path(dataset)
    features = features_for(cfg, db_path)
    sessions = session_requests(db_path, features, "evaluate")
    gate = GateConfig.from_mapping(OmegaConf.to_container(cfg.gate, resolve=True), features.verticals)
    results: dict[str, Any] = {"dataset": dataset, "run": run_id, "serve": args.serve, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="index-selection-") as tmp:
        scratch = Path(tmp)
        candidates = {}
        for name, predicates in VARIANTS.items():
            started = time.perf_counter()
            stage(cfg, run_dir, features, predicates, scratch / name, args.serve)
            candidates[name] = scratch / name / "candidate"
            results["variants"][name] = {"predicates": predicates, "serving_s": time.perf_counter() - started}
        trained = {
            name: {
                key: faiss.read_index(str(run_dir / "ensembles" / f"{key}.faiss"))
                for key in json.loads((c / "manifest.json").read_text())["contents"]["nn"]
            }
            for name, c in candidates.items()
        }
        builds: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):  # interleaved
            for name, c in candidates.items():
                builds[name].append(build_seconds(c, trained[name], scratch / "build"))
        for name, c in candidates.items():
            results["variants"][name] |= measure(c, sessions, gate, dataset) | {
                "build_s": statistics.median(builds[name])
            }
    print(markdown(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| variant | vertical | key | indexed / documents | code bytes | recall@K (K) | nn recall@K "
        "| clicks selected | ms / request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    nan = float("nan")
    for name, v in results["variants"].items():
        for vertical, r in v["verticals"].items():
            recall = f"{r['recall']:.4f} ({r['k']})" if "recall" in r else "-"
            lines.append(
                f"| {name} | {vertical} | {r['key']} | {r['indexed']} / {r['documents']} | {r['code_bytes']} "
                f"| {recall} | {r.get('nn_recall', nan):.4f} | {r.get('clicks_selected', nan):.3f} "
                f"| {r.get('ms_per_request', nan):.2f} |"
            )
    lines += ["", "| variant | nn field files (bytes) | engine build (s, median) |", "| --- | --- | --- |"]
    for name, v in results["variants"].items():
        lines.append(f"| {name} | {v['nn_bytes']} | {v['build_s']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
