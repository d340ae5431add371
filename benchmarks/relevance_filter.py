"""The rater feedback loop on a simulated world: precision of the EBR results and recall of the final list on
held-out sessions, before and after the relevance filter, per rating budget (docs/benchmarks.md, "Rater
feedback loop").

    EBR_HOME=<a home with a published version> python benchmarks/relevance_filter.py \
        [--set data.world_seed=7 --set experiment=smoke] [--replay 1500] [--budget 50 --budget 200 ...]

What it does, on a scratch copy of the dataset's DuckDB (the home is not changed):
  1. drops the copy's served results, tasks and labels, then replays `--replay` sessions of the training
     part through the served version, logged by the served results log (ebr/ranking/served_log.py) and
     loaded into `served_results`;
  2. per budget: samples that many rating tasks (seeded, stratified), the simulated raters label them
     (RATER SIMULATION, feedback.raters.error_rate), the filter is trained through the served version
     (feedback.filter: threshold at the target recall on held-out labels);
  3. scores on the evaluation part's sessions (never replayed or rated): each session's candidates retrieved
     with the stages off (`limit` each), then the filter applied. Precision of the EBR results is judged by
     the world's hidden intents (evaluation: the same query-level judgement the simulated raters make,
     without errors); recall@limit of the final list against the session's clicked documents; the filter's
     added latency per request (batches of one request, interleaved with the unfiltered path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="a retrain config override")
    parser.add_argument("--replay", type=int, default=1500)
    parser.add_argument("--budget", type=int, action="append", default=[])
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--latency-requests", type=int, default=200)
    args = parser.parse_args()
    budgets = args.budget or [50, 200, 1000]

    from ebr import home
    from ebr.config import load_config, typed
    from ebr.ranking.ebr_results import ebr_results
    from ebr.ranking.features import RankingContext
    from ebr.ranking.ranker import retrieve
    from ebr.ranking.raters import IntentJudge, simulate_labels
    from ebr.ranking.rating import import_labels, labelled_tasks, pending_tasks, sample_tasks
    from ebr.ranking.relevance import NotTrained, labelled_examples, train_filter
    from ebr.ranking.served_log import ServedLog, load_served
    from ebr.retrieval.config import load_engine_config
    from ebr.retrieval.service import SearchService
    from ebr.steps.features import features_for
    from ebr.steps.feedback import world_intents
    from ebr.steps.sessions import session_requests

    cfg = load_config(args.set)
    fb = typed(cfg.feedback)
    dataset = str(cfg.data.dataset)
    scratch = Path(tempfile.mkdtemp(prefix="ebr-relevance-"))
    base_db = scratch / "base.duckdb"
    shutil.copy(home.db_path(dataset), base_db)
    with duckdb.connect(str(base_db)) as con:  # the scratch copy starts with no served log, tasks or labels
        for table in ("served_results", "served_segments", "rating_tasks", "rater_labels"):
            con.execute(f"DROP TABLE IF EXISTS main.{table}")
    features = features_for(cfg, base_db)
    engine = load_engine_config()
    service = SearchService.open_served(engine, writable=False, dataset=dataset)
    judge = IntentJudge.from_world(world_intents(cfg), base_db)
    context = RankingContext.from_db(base_db)

    train = session_requests(base_db, features, fb.replay_part)
    replayed = [r for _, s in sorted(train.items()) for r in s.requests]
    chosen = np.sort(np.random.default_rng(fb.seed).permutation(len(replayed))[: args.replay])
    log = ServedLog(
        dataclasses.replace(engine.serving.log_results, enabled=True, sample_rate=1.0), scratch / "served"
    )
    batch = [dataclasses.replace(replayed[i], stages={"query_policy": False}) for i in chosen.tolist()]
    for start in range(0, len(batch), 64):
        part = batch[start : start + 64]
        for request, response in zip(part, service.search_many(part), strict=True):
            log.record(service, request, response)
    log.close()
    loaded = load_served(base_db, scratch / "served", "bench").to_dict()

    held = session_requests(base_db, features, "evaluate")
    requests = [r for _, s in sorted(held.items()) for r in s.requests]
    targets = [t for _, s in sorted(held.items()) for t in s.targets]
    candidates = retrieve(service, requests, args.limit)
    masks = [ebr_results(service, r) for r in candidates]
    truth = [
        np.array(
            [judge.judge(r.request.vertical, r.request.query_text, int(d)) == 1.0 for d in r.hits.doc_ids]
        )
        for r in candidates
    ]

    def scores(lists: list[np.ndarray], kept: list[np.ndarray]) -> dict[str, float]:
        ebr = np.concatenate([m[k] for m, k in zip(masks, kept, strict=True)])
        good = np.concatenate([t[k] for t, k in zip(truth, kept, strict=True)])
        all_good = np.concatenate([t[m] for t, m in zip(truth, masks, strict=True)])
        recall = [
            len(set(lst.tolist()) & set(t.tolist())) / len(t) for lst, t in zip(lists, targets, strict=True)
        ]
        return {
            "ebr_results": int(ebr.sum()),
            "ebr_precision": float(good[ebr].mean()) if ebr.any() else float("nan"),
            "ebr_recall": float(good[ebr].sum() / max(all_good.sum(), 1)),
            "list_recall": float(np.mean(recall)),
        }

    before = scores([r.hits.doc_ids for r in candidates], [np.ones(len(m), bool) for m in masks])
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        db = scratch / f"budget-{budget}.duckdb"
        shutil.copy(base_db, db)
        sampled = sample_tasks(db, budget, fb.seed, f"bench-{budget}")["sampled"]
        labels = simulate_labels(pending_tasks(db), judge, fb.raters.error_rate, fb.raters.seed)
        import_labels(db, Path("rater-simulation"), "bench", frame=labels)
        tasks = labelled_tasks(db, fb.relevant_label)
        row: dict[str, Any] = {
            "budget": budget,
            "sampled": sampled,
            "relevant_labels": int(tasks["relevant"].sum()),
        }
        try:
            examples = labelled_examples(service, tasks, fb.filter.variant, args.limit, context)
            trained, summary = train_filter(examples, fb.filter, int(cfg.seed), context)
        except NotTrained as exc:
            rows.append(row | {"trained": False, "reason": str(exc)})
            continue
        filtered = trained.apply(service, candidates)
        kept = [np.isin(r.hits.doc_ids, f.doc_ids) for r, f in zip(candidates, filtered, strict=True)]
        after = scores([f.doc_ids for f in filtered], kept)
        timings_on, timings_off = [], []
        for i in range(min(args.latency_requests, len(requests))):  # interleaved: A (retrieval), B (+ filter)
            begun = time.perf_counter()
            retrieve(service, [requests[i]], args.limit)
            timings_off.append(1000 * (time.perf_counter() - begun))
            begun = time.perf_counter()
            trained.apply(service, retrieve(service, [requests[i]], args.limit))
            timings_on.append(1000 * (time.perf_counter() - begun))
        rows.append(
            row
            | {
                "trained": True,
                "threshold": summary["threshold"],
                "holdout": summary["holdout_metrics"],
                "before": before,
                "after": after,
                "added_ms_median": statistics.median(timings_on) - statistics.median(timings_off),
                "retrieval_ms_median": statistics.median(timings_off),
            }
        )
    service.close()
    result = {
        "dataset": dataset,
        "replayed": len(chosen),
        "served_log": loaded,
        "sessions": len(requests),
        "limit": args.limit,
        "target_recall": fb.filter.target_recall,
        "error_rate": fb.raters.error_rate,
        "before": before,
        "budgets": rows,
    }
    print(json.dumps(result, indent=1, default=str))
    print(
        "\n| budget | relevant labels | threshold | EBR precision before -> after | EBR recall kept | "
        f"recall@{args.limit} before -> after | EBR results kept | added ms/request (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if not r["trained"]:
            print(f"| {r['budget']} | {r['relevant_labels']} | no filter: {r['reason']} | | | | | |")
            continue
        a, b = r["after"], r["before"]
        cells = [
            r["budget"],
            r["relevant_labels"],
            f"{r['threshold']:.4f}",
            f"{b['ebr_precision']:.4f} -> {a['ebr_precision']:.4f}",
            f"{a['ebr_recall']:.3f}",
            f"{b['list_recall']:.4f} -> {a['list_recall']:.4f}",
            f"{a['ebr_results']}/{b['ebr_results']}",
            f"{r['added_ms_median']:.2f}",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
