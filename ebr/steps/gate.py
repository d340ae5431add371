"""Step `recall-gate`: the staged candidate, the published version and the baselines, measured on the same
gate sessions (`gate.sessions`, the tuning sessions by default), then the rules (ebr/evaluation/gate.py).

Both versions are measured exactly as they would be served: loaded by `SearchService` (checksums verified),
each session's request sent to `search_many` with its vertical's expression, recall@K of the returned ids.
The BM25 baseline runs through the candidate's engine (`(fuse :bm25 1 ...)`); the text tower's baseline is
its exact top-K (an upper bound of the text tower served).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ebr import registry
from ebr.evaluation.gate import GateConfig, GateResult, evaluate_gate, write_gate_report
from ebr.models.features import FeatureSet
from ebr.ranking.ranker import ndcg_of_lists
from ebr.retrieval.calibration import Sessions, recall
from ebr.retrieval.config import EngineConfig, load_engine_config
from ebr.retrieval.retrievers import bm25_expression, single
from ebr.retrieval.service import SearchService
from ebr.runners import SERIAL, Shards
from ebr.steps.serving import references
from ebr.steps.sessions import session_requests


def served_recall(
    service: SearchService,
    sessions: Mapping[str, Sessions],
    cfg: GateConfig,
    expr: Callable[[str], str] | None = None,
    ndcg: dict[str, float] | None = None,
    stages: Mapping[str, bool] | None = None,
    skipped: dict[str, float] | None = None,
) -> dict[str, float]:
    """recall@K per vertical of `service` answering the sessions' requests (with `expr(vertical)` instead of
    the version's own expression, when given); verticals it serves no expression for are left out. `ndcg`,
    when given, receives NDCG@gate.ndcg.k of the same final lists per vertical. `stages` turns stages on or
    off for every request (`SearchRequest.stages`); `skipped`, when given, receives per vertical the share of
    requests whose (nn) part the query policy skipped."""
    out = {}
    for vertical, s in sessions.items():
        rule = cfg.verticals.get(vertical)
        if rule is None or not s.requests or (expr is None and vertical not in service.verticals):
            continue
        asked = [
            replace(r, vertical=vertical, limit=rule.k, expr=expr(vertical) if expr else None)
            for r in s.requests
        ]
        if stages is not None:
            asked = [replace(r, stages=dict(stages)) for r in asked]
        responses = service.search_many(asked)
        found = [response.hits.doc_ids for response in responses]
        if skipped is not None:
            skipped[vertical] = sum(r.nn_skipped for r in responses) / len(responses)
        out[vertical] = recall(found, s.targets, rule.k)
        if ndcg is not None:
            ndcg[vertical] = ndcg_of_lists(found, s.targets, cfg.ndcg_k)
    return out


def published_recall(
    sessions: Mapping[str, Sessions],
    cfg: GateConfig,
    engine: EngineConfig,
    dataset: str,
    ndcg: dict[str, float] | None = None,
) -> tuple[str, dict[str, float]] | None:
    """(version served for `dataset`, its recall per vertical on `sessions`), or None when nothing is
    served. The served version is verified against its manifest first (CorruptVersionError names the bad
    file)."""
    if registry.served_version(dataset) is None:
        return None
    version_dir = registry.served_version_dir(dataset, verify=False)
    service = SearchService.open(version_dir, engine, writable=False, dataset=dataset)
    try:
        return service.version, served_recall(service, sessions, cfg, ndcg=ndcg)
    finally:
        service.close()


def run_gate(
    cfg: DictConfig,
    db_path: Path,
    features: FeatureSet,
    models: Mapping[str, Any],
    candidate: Path,
    out: Path,
    shards: Shards = SERIAL,
) -> GateResult:
    """Measure the candidate, the published version and the baselines on the gate sessions; decide; write
    gate.json and gate.md into `out`."""
    gcfg = GateConfig.from_mapping(OmegaConf.to_container(cfg.gate, resolve=True), features.verticals)
    sessions = session_requests(db_path, features, gcfg.sessions)
    engine = load_engine_config()
    service = SearchService.open(candidate, engine, writable=False, dataset=cfg.data.dataset)
    try:
        ndcg: dict[str, float] = {}
        skipped: dict[str, float] = {}
        measured = served_recall(service, sessions, gcfg, ndcg=ndcg, skipped=skipped)
        bm25 = served_recall(service, sessions, gcfg, bm25_expression)
        policy = None  # the query policy's effect, reported next to the rules (they judge it on)
        if "query_policy" in service.stages:
            off_ndcg: dict[str, float] = {}
            off = served_recall(service, sessions, gcfg, ndcg=off_ndcg, stages={"query_policy": False})
            policy = {
                v: {
                    "nn_skipped": skipped[v],
                    "recall": measured[v],
                    "recall_policy_off": off[v],
                    "ndcg": ndcg[v],
                    "ndcg_policy_off": off_ndcg[v],
                }
                for v in off
            }
    finally:
        service.close()
    baselines: dict[str, dict[str, float]] = {"bm25": bm25}
    if "text" in models:
        baselines["text"] = _text_recall(features, models, gcfg, shards)
    published_ndcg: dict[str, float] = {}
    published = published_recall(sessions, gcfg, engine, cfg.data.dataset, published_ndcg)
    version, published_values = published if published is not None else (None, None)
    result = evaluate_gate(
        measured,
        published_values,
        gcfg,
        published_version=version,
        sessions={v: len(s.requests) for v, s in sessions.items()},
        baselines=baselines,
        ndcg=ndcg,
        published_ndcg=published_ndcg,
    )
    result.query_policy = policy
    write_gate_report(result, out)
    return result


def _text_recall(
    features: FeatureSet, models: Mapping[str, Any], gcfg: GateConfig, shards: Shards
) -> dict[str, float]:
    """The text tower's exact top-K recall per vertical on the gate sessions."""
    out = {}
    for vertical, rule in gcfg.verticals.items():
        code = features.verticals.index(vertical)
        rows = features.part_rows(gcfg.sessions)
        if not np.any(features.session_vertical[rows] == code):
            continue
        text = {"text": models["text"]}
        recall_, _ = references(features, text, [single("text")], vertical, rule.k, gcfg.sessions, shards)
        if np.isfinite(recall_["text"]):
            out[vertical] = recall_["text"]
    return out
