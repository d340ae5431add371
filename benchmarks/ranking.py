"""The ranking stage on a finished retrain: NDCG@10 of the final list per embedding variant on held-out
sessions, next to the retrieval order, and the serving latency the ranker adds (docs/benchmarks.md, section
"Ranking stage").

    EBR_HOME=<a home with a finished retrain> python benchmarks/ranking.py --run <run folder> \
        [--part evaluate] [--max-requests 4000] [--latency-requests 200] [--repeats 3]

Each variant (none, cosine, hadamard, raw) is trained by the `ranker` step's code (ebr/steps/ranker.py) on the
run's train sessions through the run's staged candidate (its stages off) and scored on the `--part` sessions
(never trained on). Latency: the same requests through `SearchService.search_many` one at a time, with the
shipped ranker on and off, interleaved request by request, p50/p95 of the per-request wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ebr import home
from ebr.config import load_config, typed
from ebr.ranking.features import VARIANTS, RankingContext
from ebr.ranking.ranker import ndcg_of_lists, retrieve, with_clicks
from ebr.registry.publication import add_stage
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService
from ebr.steps.features import features_for
from ebr.steps.ranker import STAGE, fit, logged_requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--part", default="evaluate")
    parser.add_argument("--max-requests", type=int, default=4000)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = OmegaConf.merge(OmegaConf.load(args.run / "config.yaml"), {"ranking": load_config().ranking})
    rcfg = typed(cfg.ranking)
    rcfg = replace(rcfg, max_requests=args.max_requests)
    db = home.db_path(cfg.data.dataset)
    features = features_for(cfg, db)
    work = Path(tempfile.mkdtemp(prefix="ebr-ranking-"))
    candidate = work / "candidate"
    shutil.copytree(args.run / "serving" / "candidate", candidate)
    engine = load_engine_config()
    service = SearchService.open(candidate, engine, writable=False, dataset=cfg.data.dataset)
    rng = np.random.default_rng(rcfg.seed)
    asked, clicks = logged_requests(db, features, rcfg.train_part)
    chosen = np.sort(rng.permutation(len(asked))[: rcfg.max_requests])
    started = time.perf_counter()
    train, targets = with_clicks(
        retrieve(service, [asked[i] for i in chosen], rcfg.candidates), [clicks[i] for i in chosen]
    )
    valid = np.zeros(len(train), dtype=bool)
    valid[rng.permutation(len(train))[: int(rcfg.valid_share * len(train))]] = True
    held, held_clicks = logged_requests(db, features, args.part)
    scored = retrieve(service, held, rcfg.candidates)
    context = RankingContext.from_db(db)
    results = {"requests": {"train": int((~valid).sum()), "valid": int(valid.sum()), args.part: len(held)}}
    ndcg = {"retrieval": ndcg_of_lists([r.hits.doc_ids for r in scored], held_clicks)}
    seconds = {}
    rankers = {}
    for variant in VARIANTS:
        begun = time.perf_counter()
        rankers[variant] = fit(service, rcfg, variant, context, train, targets, valid)
        seconds[variant] = round(time.perf_counter() - begun, 2)
        ndcg[variant] = ndcg_of_lists(
            [h.doc_ids for h in rankers[variant].apply(service, scored)], held_clicks
        )
    service.close()
    results |= {"ndcg@10": {k: round(v, 4) for k, v in ndcg.items()}, "train_s": seconds}
    results["prepare_s"] = round(time.perf_counter() - started - sum(seconds.values()), 2)
    shipped = rankers[rcfg.variant]
    shipped.save(work / "stage")
    add_stage(candidate, STAGE, work / "stage", {"variant": rcfg.variant})
    service = SearchService.open(candidate, engine, writable=False, dataset=cfg.data.dataset)
    sample = held[: args.latency_requests]
    service.search_many([replace(r, limit=10) for r in sample[:20]])  # warm: towers, titles, model
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for request in sample:  # interleaved: the same request with the ranker on, then off
            for mode, stages in (("on", {}), ("off", {"ranker": False})):
                begun = time.perf_counter()
                service.search_many([replace(request, limit=10, stages=stages)])
                times[mode].append(1000 * (time.perf_counter() - begun))
    service.close()
    results["latency_ms"] = {
        mode: {"p50": round(float(np.percentile(t, 50)), 3), "p95": round(float(np.percentile(t, 95)), 3)}
        for mode, t in times.items()
    }
    added = np.array(times["on"]) - np.array(times["off"])
    results["latency_ms"]["added_p50"] = round(float(np.percentile(added, 50)), 3)
    results["variant_shipped"], results["candidates"] = rcfg.variant, rcfg.candidates
    print(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
