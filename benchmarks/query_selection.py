"""Query selection (§4.3, docs/selection.md#query-selection): per vertical and per rule, the share of requests
whose (nn) part is skipped, recall@K, NDCG@10 and the serving latency with and without the policy, on the
evaluation sessions (never trained, tuned nor gated on) of a finished retrain run.

    EBR_HOME=/tmp/home python benchmarks/query_selection.py [--run RUN_ID] [--repeats 3] [--out results.json]

The run's staged candidate is copied to a temporary folder and a policy with every rule on (repeat_click,
length with its configured band, the classifier) is trained on the run's train sessions exactly as the
`query-policy` step trains it (ebr/steps/query_policy.py) and added to the copy. Variants: the policy off,
each rule alone (`QueryPolicy.only`), the classifier at other thresholds, and all rules. Every request batch
(--batch requests of one vertical) is sent to `SearchService.search_many` once per variant, in an order
rotated per batch and repeat (A and B interleaved); latency is each response's `took_ms` (its share of the
batch's query encoding included: a skipped request encodes nothing), p50 / p95 over requests and repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ebr import home
from ebr.config import load_config, typed
from ebr.registry.publication import add_stage
from ebr.retrieval.calibration import ndcg10, recall
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService
from ebr.selection.queries import QueryPolicy, train_policy
from ebr.steps.features import features_for
from ebr.steps.sessions import session_requests

OFF = {"query_policy": False, "relevance_filter": False, "ranker": False}
ON = OFF | {"query_policy": True}


def variants(policy: QueryPolicy, thresholds: list[float]) -> dict[str, QueryPolicy | None]:
    out: dict[str, QueryPolicy | None] = {"off": None}
    for rule in policy.rules:
        out[rule] = policy.only([rule])
    if policy.classifier is not None:
        for t in thresholds:
            alone = policy.only(["classifier"])
            out[f"classifier<{t}"] = replace(alone, classifier=replace(policy.classifier, threshold=t))
    out["all"] = policy
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=None, help="default: the only dataset of $EBR_HOME")
    parser.add_argument("--run", default=None, help="a finished retrain run (default: the newest)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--thresholds", default="0.005,0.01", help="extra classifier thresholds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dataset = args.dataset or home.datasets()[0]
    runs = home.runs_dir(dataset)
    run = runs / (
        args.run or sorted(p.name for p in runs.iterdir() if (p / "serving" / "candidate").is_dir())[-1]
    )
    data = OmegaConf.load(run / "config.yaml").data
    cfg = load_config(
        [f"data.scale={data.scale}", f"data.world_seed={data.world_seed}", f"data.dataset={dataset}"]
    )
    qcfg = typed(cfg.query_selection)
    qcfg.repeat_click.enabled = qcfg.length.enabled = qcfg.classifier.enabled = True
    db_path = home.db_path(dataset)
    features = features_for(cfg, db_path)
    engine = load_engine_config()
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "candidate"
        shutil.copytree(run / "serving" / "candidate", candidate)
        train = session_requests(db_path, features, "train")
        service = SearchService.open(candidate, engine, writable=False, dataset=dataset)
        try:
            summary = train_policy(
                qcfg,
                service,
                [r for s in train.values() for r in s.requests],
                [t for s in train.values() for t in s.targets],
                list(features.verticals),
                int(cfg.seed),
                Path(tmp) / "stage",
            )
        finally:
            service.close()
        add_stage(candidate, "query_policy", Path(tmp) / "stage", summary)
        service = SearchService.open(candidate, engine, writable=False, dataset=dataset)
        try:
            policy = service.stages["query_policy"]
            table = measure(service, policy, session_requests(db_path, features, "evaluate"), cfg, args)
        finally:
            service.close()
    report = {"run": run.name, "dataset": dataset, "policy": summary, "table": table}
    print(markdown(table, summary))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=float))


def measure(
    service: SearchService, policy: QueryPolicy, sessions: dict[str, Any], cfg: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    named = variants(policy, thresholds)
    k = int(cfg.gate.k)
    rows = []
    for vertical, s in sessions.items():
        if vertical not in service.verticals or not s.requests:
            continue
        asked = [replace(r, vertical=vertical, limit=k) for r in s.requests]
        found: dict[str, list[np.ndarray]] = {n: [np.empty(0)] * len(asked) for n in named}
        skipped = {n: np.zeros(len(asked), dtype=bool) for n in named}
        took: dict[str, list[float]] = {n: [] for n in named}
        order = list(named)
        turn = 0
        for _ in range(args.repeats):
            for start in range(0, len(asked), args.batch):
                turn += 1
                for name in order[turn % len(order) :] + order[: turn % len(order)]:
                    variant = named[name]
                    if variant is not None:
                        service.stages["query_policy"] = variant
                    stages = OFF if variant is None else ON
                    batch = [replace(r, stages=stages) for r in asked[start : start + args.batch]]
                    for i, response in enumerate(service.search_many(batch), start):
                        found[name][i] = response.hits.doc_ids
                        skipped[name][i] = response.nn_skipped
                        took[name].append(response.took_ms)
        for name in named:
            rows.append(
                {
                    "vertical": vertical,
                    "variant": name,
                    "requests": len(asked),
                    "nn_skipped": float(skipped[name].mean()),
                    f"recall@{k}": recall(found[name], s.targets, k),
                    "ndcg@10": ndcg10(found[name], s.targets),
                    "p50_ms": float(np.percentile(took[name], 50)),
                    "p95_ms": float(np.percentile(took[name], 95)),
                }
            )
    return rows


def markdown(table: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    recall_key = next(k for k in table[0] if k.startswith("recall@"))
    lines = [
        f"| vertical | variant | requests | nn skipped | {recall_key} | ndcg@10 | p50 ms | p95 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        lines.append(
            f"| {r['vertical']} | {r['variant']} | {r['requests']} | {r['nn_skipped']:.1%} | "
            f"{r[recall_key]:.4f} | {r['ndcg@10']:.4f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |"
        )
    c = summary.get("classifier") or {}
    lines.append(
        f"\npolicy: {summary.get('repeat_click', {}).get('pairs')} repeat pairs; "
        f"length {summary.get('length')}; "
        f"classifier AUC {c.get('auc')}, accuracy {c.get('accuracy')}, nn helps {c.get('nn_helps')} "
        f"({c.get('positives')} of {c.get('requests')}), threshold {c.get('threshold')}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
