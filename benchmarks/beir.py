"""A BEIR dataset through the whole platform: convert it to a search log, run the real retrain flow, and score
the published version through the engine (the path `ebr serve` answers through) with BEIR's metrics.

    python benchmarks/beir.py --dataset ../shared/data/beir_scifact --out /tmp/ebr-beir \
        [--variant trigram --variant pretrained --variant pretrained_ft --variant platform] [--set KEY=VALUE]

Each variant is one retrain in its own home under --out (the converted log and the pretrained encoder's
cache are shared): `trigram` trains the hashed-trigram text tower from scratch, `pretrained` serves the
pretrained encoder frozen, `pretrained_ft` fine-tunes it with the platform's triplet loss and hard negatives,
`platform` trains all three and lets the platform choose per vertical on the tuning sessions (default gate).
The single-variant runs switch the gate's baseline rules off so that every variant is published and scored.

Scored on the test queries (the latest sessions: never trained, tuned or gated on), per variant: through the
engine (the published version's vertical template, `SearchService.search_many`), exact top-100 of its model
(the version's own towers and document embeddings), and BM25 through the same engine. nDCG@10 and Recall@100
as pytrec_eval computes them (ebr/evaluation/metrics.py). Results: --out/results.json and a markdown table.
The dataset is read from its path only (SciFact is CC BY-NC: nothing of it is copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = {
    "trigram": ["train.models=[text]"],
    "pretrained": ["train.models=[pretrained]"],
    "pretrained_ft": ["train.models=[pretrained_ft]"],
    "platform": ["train.models=[text,pretrained,pretrained_ft]"],
}
NO_BASELINE_RULES = ["gate.baselines.bm25=null", "gate.baselines.text=null"]


def log_overrides(log_dir: Path, report: dict[str, Any], tune: int) -> list[str]:
    """The retrain overrides of a converted BEIR log: the test queries are the evaluation sessions."""
    test = report["splits"]["test"]["sessions"]
    total = sum(split["sessions"] for split in report["splits"].values())
    return [
        "experiment=text_search",
        f"data.logs_dir={log_dir}",
        f"data.split.tune={tune}",
        f"data.split.evaluate={test}",
        f"data.split.max_heldout_fraction={min(1.0, (test + tune) / total + 1e-9)}",
    ]


def score(version_dir: Path, log_dir: Path, vertical: str, dataset: str) -> dict[str, dict[str, float]]:
    """nDCG@10 / Recall@100 of the test queries: through the engine, exact top-100 of each model, BM25."""
    import numpy as np

    from ebr.ann.knn import exact_knn
    from ebr.datasets.beir import read_split
    from ebr.evaluation.metrics import evaluate
    from ebr.models.export import QueryInput, load_query_encoder
    from ebr.retrieval.config import load_engine_config
    from ebr.retrieval.retrievers import bm25_expression
    from ebr.retrieval.service import SearchRequest, SearchService
    from ebr.retrieval.stages import ORDER

    queries, qrels = read_split(log_dir, "test")
    sessions = list(queries)
    requests = [SearchRequest(vertical=vertical, query_text=queries[s], limit=100) for s in sessions]
    service = SearchService.open(version_dir, load_engine_config(), writable=False, dataset=dataset)
    off = dict.fromkeys(ORDER, False)
    runs = [("engine", None, {}), ("bm25 (engine)", bm25_expression(vertical), off)]
    if service.stages:  # the version's stages (docs/engine.md): the engine's own order beside them
        runs.insert(1, ("engine, stages off", None, off))
    out = {}
    try:
        for name, expr, stages in runs:
            asked = [SearchRequest(**(vars(r) | {"expr": expr, "stages": stages})) for r in requests]
            found = [r.hits.doc_ids.tolist() for r in service.search_many(asked)]
            out[name] = evaluate(qrels, dict(zip(sessions, found, strict=True)), ks=(10, 100))
        doc_ids = np.load(version_dir / "doc_ids.npy")
        for tower in sorted((version_dir / "towers").iterdir()):
            encoder = load_query_encoder(tower)
            q = encoder.encode([QueryInput(queries[s]) for s in sessions])
            docs = np.load(version_dir / "embeddings" / f"{tower.name}.npy", mmap_mode="r")
            _, rows = exact_knn(q, docs, 100)
            found = [doc_ids[r[r >= 0]].tolist() for r in rows]
            out[f"{tower.name} (exact)"] = evaluate(
                qrels, dict(zip(sessions, found, strict=True)), ks=(10, 100)
            )
    finally:
        service.close()
    return {name: {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"]} for name, m in out.items()}


def run_variant(name: str, root: Path, log_dir: Path, report: dict, args: argparse.Namespace) -> dict:
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    (root / "cache").mkdir(exist_ok=True)
    if not (home / "cache").exists():
        (home / "cache").symlink_to(root / "cache")  # the frozen encoder's corpus encoding, computed once
    os.environ["EBR_HOME"] = str(home)
    from ebr import registry
    from ebr.flows.retrain import retrain

    overrides = log_overrides(log_dir, report, args.tune) + VARIANTS[name] + list(args.set)
    if name != "platform":
        overrides += NO_BASELINE_RULES
    started = time.perf_counter()
    run = retrain(overrides=overrides)
    seconds = time.perf_counter() - started
    version_dir = registry.served_version_dir(run["dataset"])
    serving = json.loads((version_dir / registry.MANIFEST).read_text())["serving"]["verticals"]
    return {
        "variant": name,
        "overrides": overrides,
        "retrain_seconds": round(seconds, 1),
        "published_version": run["published_version"],
        "gate": run["gate"]["reason"],
        "served": {v: {"retriever": t["retriever"], "expr": t["expr"]} for v, t in serving.items()},
        "scores": score(version_dir, log_dir, args.vertical, run["dataset"]),
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| variant | retriever | nDCG@10 | Recall@100 | retrain (s) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        for name, m in r["scores"].items():
            cells = f"{m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {r['retrain_seconds']}"
            lines.append(f"| {r['variant']} | {name} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", type=Path, required=True, help="a BEIR folder (corpus.jsonl, queries, qrels)"
    )
    parser.add_argument("--out", type=Path, required=True, help="where the log, the homes and results go")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: all")
    parser.add_argument("--vertical", default="papers", help="the vertical name of the documents")
    parser.add_argument(
        "--tune", type=int, default=100, help="training queries held out for tuning and the gate"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Hydra override")
    args = parser.parse_args(argv)
    from ebr.datasets.beir import convert_beir

    root = args.out.resolve()
    log_dir = root / "log"
    if not (log_dir / "report.json").is_file():
        convert_beir(args.dataset.resolve(), log_dir, vertical=args.vertical)
    report = json.loads((log_dir / "report.json").read_text())
    results = []
    for name in args.variant or list(VARIANTS):
        results.append(run_variant(name, root, log_dir, report, args))
        (root / "results.json").write_text(json.dumps(results, indent=2))
        print(markdown(results), flush=True)
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    main()
