"""The retrain's `relevance-filter` step: train the relevance filter of EBR results (ebr/ranking/relevance.py)
on the dataset's rater labels, features computed through the staged candidate, and add it to the candidate
as its stage `relevance_filter` before the recall gate measures it (so it is gated, checksummed, published
and rolled back with the version). No labels, or too few: no stage, and a logged note."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ebr.config import FeedbackConfig, typed
from ebr.ranking.features import RankingContext
from ebr.ranking.rating import labelled_tasks
from ebr.ranking.relevance import NotTrained, labelled_examples, train_filter
from ebr.registry.publication import add_stage
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService

log = logging.getLogger(__name__)
STAGE = "relevance_filter"


def train_relevance_filter(cfg: DictConfig, db_path: Path, candidate: Path, out: Path) -> dict[str, Any]:
    """Train the filter on `rater_labels` through `candidate`, stage it there; the step's summary."""
    fb: FeedbackConfig = typed(cfg.feedback)
    tasks = labelled_tasks(db_path, fb.relevant_label)
    if tasks.empty:
        note = "no rater labels in the dataset (ebr feedback rates served results): no relevance filter"
        log.info(note)
        return {"trained": False, "reason": note}
    engine = load_engine_config()
    context = RankingContext.from_db(db_path)
    service = SearchService.open(candidate, engine, writable=False, dataset=cfg.data.dataset)
    try:
        candidates = max(fb.filter.candidates, engine.default_limit)
        examples = labelled_examples(service, tasks, fb.filter.variant, candidates, context)
        trained, summary = train_filter(examples, fb.filter, int(cfg.seed), context)
    except NotTrained as exc:
        note = f"{len(tasks)} rated tasks: {exc}: no relevance filter"
        log.info(note)
        return {"trained": False, "reason": note, "rated_tasks": len(tasks)}
    finally:
        service.close()
    summary = {"rated_tasks": len(tasks)} | summary
    stage = out / "stage"
    trained.save(stage)
    add_stage(candidate, STAGE, stage, summary)
    return {"trained": True, **summary}


def filter_markdown(summary: dict[str, Any]) -> str:
    """The step's artifact: what the filter was trained on and its held-out effect."""
    if not summary.get("trained"):
        return f"No relevance filter: {summary.get('reason')}"
    m = summary["holdout_metrics"]
    return "\n".join(
        [
            f"Relevance filter of EBR results ({summary['variant']} features), threshold "
            f"{summary['threshold']:.4f} for recall {summary['target_recall']} of relevant EBR results",
            "",
            "| rated tasks | labelled EBR results | relevant | not retrieved | train | held out |",
            "| --- | --- | --- | --- | --- | --- |",
            "| "
            + " | ".join(str(summary[k]) for k in ("rated_tasks", "labels", "relevant", "missing", "train"))
            + f" | {summary['holdout']} |",
            "",
            "| held out | precision before | precision after | recall | kept |",
            "| --- | --- | --- | --- | --- |",
            f"| {m['examples']} | "
            + " | ".join(f"{m[k]:.3f}" for k in ("precision_before", "precision_after", "recall", "kept"))
            + " |",
        ]
    )
