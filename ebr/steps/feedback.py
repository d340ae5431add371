"""The steps of the `feedback` flow (docs/feedback.md): replay logged sessions through the served version
(the embedded default's stand-in for real traffic), load the served-results log, sample rating tasks under
the budget, rate them (imported labels, or RATER SIMULATION from a simulated world's hidden intents)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ebr import home
from ebr.config import FeedbackConfig, typed
from ebr.ranking.raters import INTENTS_FILE, RATER, IntentJudge, simulate_labels
from ebr.ranking.rating import import_labels, label_counts, pending_tasks, sample_tasks
from ebr.ranking.served_log import ServedLog, load_served, served_dir
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService
from ebr.steps.features import features_for
from ebr.steps.sessions import session_requests

REPLAY_BATCH = 64


def replay_sessions(cfg: DictConfig, n: int, seed: int) -> dict[str, Any]:
    """Send `n` sessions of `feedback.replay_part` (a seeded draw) through the served version's
    SearchService, as `ebr serve` answers them but with the query policy off, and log their EBR results with
    the served-results log."""
    dataset, fb = str(cfg.data.dataset), typed(cfg.feedback)
    db_path = home.db_path(dataset)
    sessions = session_requests(db_path, features_for(cfg, db_path), fb.replay_part)
    requests = [r for _, s in sorted(sessions.items()) for r in s.requests]
    chosen = np.sort(np.random.default_rng(seed).permutation(len(requests))[:n])
    engine = load_engine_config()
    logged = ServedLog.for_dataset(
        dataclasses.replace(engine.serving.log_results, enabled=True, sample_rate=1.0), dataset
    )
    service = SearchService.open_served(engine, writable=False, dataset=dataset)
    try:
        # the query policy off: the replayed sessions are the logs it learnt from (each clicked, so each is a
        # "repeat of a clicked query" it would answer by term matching alone); every other stage as served
        batch = [dataclasses.replace(requests[i], stages={"query_policy": False}) for i in chosen.tolist()]
        for start in range(0, len(batch), REPLAY_BATCH):
            part = batch[start : start + REPLAY_BATCH]
            for request, response in zip(part, service.search_many(part), strict=True):
                logged.record(service, request, response)
    finally:
        logged.close()
        service.close()
    return {
        "part": fb.replay_part,
        "version": service.version,
        "requests": len(chosen),
        "logged": logged.written,
        "dropped": logged.dropped,
    }


def load_log(dataset: str, run_id: str) -> dict[str, Any]:
    """The served-results segments not loaded yet into `served_results` (bad lines quarantined)."""
    return load_served(home.db_path(dataset), served_dir(dataset), run_id).to_dict()


def sample(dataset: str, fb: FeedbackConfig, run_id: str) -> dict[str, Any]:
    """New rating tasks under `feedback.budget`, seeded, stratified by vertical."""
    return sample_tasks(home.db_path(dataset), fb.budget, fb.seed, run_id)


def world_intents(cfg: DictConfig) -> Path:
    """The hidden intents the simulated raters read: eval.intents_path, else ground_truth/ of data.logs_dir,
    else of the dataset's simulated world (worlds/<dataset>/)."""
    if cfg.eval.intents_path:
        return Path(cfg.eval.intents_path)
    if cfg.data.logs_dir:
        return Path(cfg.data.logs_dir) / INTENTS_FILE
    return home.worlds_dir() / str(cfg.data.dataset) / INTENTS_FILE


def rate(cfg: DictConfig, run_id: str, labels: Path | None) -> dict[str, Any]:
    """Import `labels`, or (none given) let the simulated raters label the tasks not labelled yet."""
    dataset, fb = str(cfg.data.dataset), typed(cfg.feedback)
    db_path = home.db_path(dataset)
    if labels is not None:
        report = import_labels(db_path, labels, run_id)
        source, unjudged = str(labels), 0
    else:  # RATER SIMULATION: the simulated world's hidden intents judge (ebr/ranking/raters.py)
        judge = IntentJudge.from_world(world_intents(cfg), db_path)
        tasks = pending_tasks(db_path)
        frame = simulate_labels(tasks, judge, fb.raters.error_rate, fb.raters.seed)
        report = import_labels(db_path, Path(RATER), run_id, source=RATER, frame=frame)
        source, unjudged = RATER, len(tasks) - len(frame)
    return {
        "source": source,
        "unjudged": unjudged,
        **report.to_dict(),
        **label_counts(db_path, fb.relevant_label),
    }
