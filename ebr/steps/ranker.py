"""Step `ranker`: train the lambdarank ranking stage on the train sessions' clicks through the staged
candidate (its stages off), compare the embedding variants on the report sessions, and add the shipped
variant to the candidate as its stage `ranker` (before the recall gate, which then measures it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ebr.config import RankingConfig, typed
from ebr.models.features import FeatureSet
from ebr.ranking.features import VARIANTS, RankingContext, candidate_features
from ebr.ranking.ranker import (
    Ranker,
    click_labels,
    ndcg_of_lists,
    retrieve,
    train_booster,
    with_clicks,
)
from ebr.ranking.trees import Forest
from ebr.registry.publication import add_stage
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.retrieval.stages import Retrieved
from ebr.steps.sessions import session_requests

STAGE = "ranker"


def check_ranking(rcfg: RankingConfig, max_limit: int) -> None:
    """ValueError naming the bad `ranking.` key."""
    for name in [rcfg.variant, *rcfg.compare]:
        if name not in VARIANTS:
            raise ValueError(
                f"ranking.variant / ranking.compare: {name!r} is not one of {', '.join(VARIANTS)}"
            )
    if not 1 <= rcfg.candidates <= max_limit:
        raise ValueError(f"ranking.candidates must be between 1 and engine.max_limit ({max_limit})")
    if not 0 <= rcfg.valid_share < 1:
        raise ValueError(f"ranking.valid_share must be in [0, 1), got {rcfg.valid_share}")
    for key in ("max_requests", "batch_size", "rounds", "early_stopping", "num_threads"):
        if getattr(rcfg, key) < 1:
            raise ValueError(f"ranking.{key} must be at least 1, got {getattr(rcfg, key)}")


def logged_requests(
    db_path: Path, features: FeatureSet, part: str
) -> tuple[list[SearchRequest], list[np.ndarray]]:
    """The requests of a split part's sessions that clicked something, with their clicked documents."""
    requests: list[SearchRequest] = []
    targets: list[np.ndarray] = []
    for sessions in session_requests(db_path, features, part).values():
        requests += sessions.requests
        targets += [np.asarray(t, dtype=np.int64) for t in sessions.targets]
    return requests, targets


def train_ranker(
    cfg: DictConfig, db_path: Path, features: FeatureSet, candidate: Path, out: Path
) -> dict[str, Any]:
    """Train every compared variant, report NDCG@10 on the report sessions, save the shipped one in
    `out/stage` and add it to the candidate; the step's summary."""
    rcfg: RankingConfig = typed(cfg.ranking)
    if not rcfg.enabled:
        return {"enabled": False}
    engine = load_engine_config()
    check_ranking(rcfg, engine.max_limit)
    service = SearchService.open(candidate, engine, writable=False, dataset=cfg.data.dataset)
    try:
        summary = _train(rcfg, service, db_path, features, out)
    finally:
        service.close()
    if summary["shipped"]:
        add_stage(candidate, STAGE, out / "stage", summary)
    (out / "ranker.md").write_text(ranker_markdown(summary))
    return summary


def _train(
    rcfg: RankingConfig, service: SearchService, db_path: Path, features: FeatureSet, out: Path
) -> dict[str, Any]:
    rng = np.random.default_rng(rcfg.seed)
    requests, targets = logged_requests(db_path, features, rcfg.train_part)
    chosen = np.sort(rng.permutation(len(requests))[: rcfg.max_requests])
    train, train_targets = with_clicks(
        retrieve(service, [requests[i] for i in chosen], rcfg.candidates, rcfg.batch_size),
        [targets[i] for i in chosen],
    )
    if not train:
        raise ValueError(
            f"ranker: no {rcfg.train_part} session's click is among its {rcfg.candidates} candidates"
        )
    valid_rows = np.zeros(len(train), dtype=bool)
    valid_rows[rng.permutation(len(train))[: int(rcfg.valid_share * len(train))]] = True
    report_requests, report_targets = logged_requests(db_path, features, rcfg.report_part)
    report = retrieve(service, report_requests, rcfg.candidates, rcfg.batch_size)
    context = RankingContext.from_db(db_path)
    ndcg: dict[str, float] = {"retrieval": ndcg_of_lists([r.hits.doc_ids for r in report], report_targets)}
    rankers: dict[str, Ranker] = {}
    for variant in dict.fromkeys([*rcfg.compare, rcfg.variant]):
        ranker = fit(service, rcfg, variant, context, train, train_targets, valid_rows)
        rankers[variant] = ranker
        ranked = ranker.apply(service, report) if report else []
        ndcg[variant] = ndcg_of_lists([h.doc_ids for h in ranked], report_targets)
    shipped = rankers[rcfg.variant]
    gains = shipped.booster.feature_importance("gain")
    importance = {
        shipped.names[i]: round(float(gains[i]), 3)
        for i in np.argsort(-gains, kind="stable")[:15]
        if gains[i] > 0
    }
    summary = {
        "enabled": True,
        "variant": rcfg.variant,
        "candidates": rcfg.candidates,
        "train_requests": int((~valid_rows).sum()),
        "valid_requests": int(valid_rows.sum()),
        "report_part": rcfg.report_part,
        "report_requests": len(report),
        "rounds": int(shipped.booster.best_iteration or shipped.booster.current_iteration()),
        "ndcg@10": {k: round(v, 4) for k, v in ndcg.items()},
        "importance": importance,
        # shipped only when it beats the engine's order on the held-out report sessions (SciFact: a ranker
        # learning from the sessions the towers trained on over-trusts their similarity, docs/ranking.md)
        "shipped": not ndcg[rcfg.variant] <= ndcg["retrieval"],
    }
    if summary["shipped"]:
        shipped.save(out / "stage", {"trained": summary})
    return summary


def fit(
    service: SearchService,
    rcfg: RankingConfig,
    variant: str,
    context: RankingContext | None,
    train: Sequence[Retrieved],
    targets: Sequence[np.ndarray],
    valid_rows: np.ndarray,
) -> Ranker:
    """A ranker of `variant` trained on `train` (labels: the clicks), early-stopped on `valid_rows`."""
    parts = []
    for rows in (np.flatnonzero(~valid_rows), np.flatnonzero(valid_rows)):
        batch = [train[i] for i in rows]
        found = candidate_features(service, batch, variant, context)
        parts.append(
            (found.matrix, click_labels(batch, [targets[i] for i in rows]), found.groups, found.names)
        )
    (matrix, labels, groups, names), (v_matrix, v_labels, v_groups, _) = parts
    booster = train_booster(
        (matrix, labels, groups),
        (v_matrix, v_labels, v_groups) if len(v_groups) else None,
        names,
        rcfg.params,
        rcfg.rounds,
        rcfg.early_stopping,
        rcfg.seed,
        rcfg.num_threads,
    )
    model = Forest.from_booster(booster)
    return Ranker(model, variant, names, rcfg.candidates, rcfg.num_threads, context, booster)


def ranker_markdown(summary: Mapping[str, Any]) -> str:
    """The step's artifact: NDCG@10 per variant on the report sessions and the shipped model's importances."""
    if not summary.get("enabled"):
        return "Ranking stage off (ranking.enabled=false): the version carries no ranker"
    if not summary.get("shipped", True):
        ndcg = summary["ndcg@10"]
        return (
            f"Ranker not shipped: NDCG@10 {ndcg[summary['variant']]} on the {summary['report_part']} "
            f"sessions, not above the engine's order ({ndcg['retrieval']}); the version carries no ranker"
        )
    lines = [
        f"Ranker: LightGBM lambdarank, variant **{summary['variant']}** shipped, {summary['candidates']} "
        f"candidates, {summary['train_requests']} training requests (+{summary['valid_requests']} for early "
        f"stopping), {summary['rounds']} rounds",
        "",
        f"NDCG@10 of the final list on {summary['report_requests']} {summary['report_part']} requests:",
        "",
        "| ranking | NDCG@10 |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in summary["ndcg@10"].items()]
    lines += [
        "",
        "Feature importance (gain) of the shipped model:",
        "",
        "| feature | gain |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {gain:.1f} |" for name, gain in summary["importance"].items()]
    return "\n".join(lines)
