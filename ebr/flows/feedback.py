"""Prefect flow `feedback`: the rater feedback loop (the paper's §5; docs/feedback.md). Load the served
results log (`ebr serve` records each search's EBR results) into `served_results`, sample `rating_tasks`
under the budget, rate them: import a label file, or in the embedded default let the simulated raters label
them (RATER SIMULATION from the world's hidden intents, ebr/ranking/raters.py). With `replay`, first send
that many sessions of the training part through the served version, recorded by the same served-results log
(the embedded default has no real traffic). The next retrain's `relevance-filter` step trains on the labels.

    ebr feedback [--replay N] [--labels FILE] [--dataset NAME] [OVERRIDES...] [--json]

Each run writes runs/feedback-<time>/ in the dataset (config.yaml, one folder per step, report.json); its
counts are Prefect artifacts (`replay`, `served-log`, `rating-tasks`, `rater-labels`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ebr import home
from ebr.config import load_config, typed
from ebr.io import atomic_write_text
from ebr.runs import start_run
from ebr.steps.feedback import load_log, rate, replay_sessions, sample
from ebr.steps.resume import run_step


@task(name="replay-sessions", cache_policy=NO_CACHE)
def replay_task(cfg: DictConfig, run_dir: Path, n: int) -> dict[str, Any]:
    summary = run_step(run_dir, "replay", lambda out: replay_sessions(cfg, n, int(cfg.feedback.seed)))
    create_markdown_artifact(
        key="replay",
        markdown=f"Replayed {summary['requests']} `{summary['part']}` sessions through version "
        f"{summary['version']}: {summary['logged']} searches with EBR results logged",
        description="Sessions sent through the served version (stand-in for real traffic)",
    )
    return summary


@task(name="load-served-log", cache_policy=NO_CACHE)
def load_task(cfg: DictConfig, run_dir: Path, run_id: str) -> dict[str, Any]:
    summary = run_step(run_dir, "served_log", lambda out: load_log(str(cfg.data.dataset), run_id))
    create_table_artifact(
        key="served-log",
        table=[{k: v for k, v in summary.items() if k != "resumed"}],
        description="Served-results segments loaded: lines = requests + quarantined; hits = EBR results",
    )
    return summary


@task(name="sample-rating-tasks", cache_policy=NO_CACHE)
def sample_task(cfg: DictConfig, run_dir: Path, run_id: str) -> dict[str, Any]:
    summary = run_step(
        run_dir, "rating_tasks", lambda out: sample(str(cfg.data.dataset), typed(cfg.feedback), run_id)
    )
    create_table_artifact(
        key="rating-tasks",
        table=summary["verticals"],
        description=f"Rating tasks sampled under the budget ({summary['budget']}), stratified by vertical",
    )
    return summary


@task(name="rate", cache_policy=NO_CACHE)
def rate_task(cfg: DictConfig, run_dir: Path, run_id: str, labels: str | None) -> dict[str, Any]:
    summary = run_step(run_dir, "rate", lambda out: rate(cfg, run_id, Path(labels) if labels else None))
    create_table_artifact(
        key="rater-labels",
        table=summary["verticals"],
        description=f"Labels from {summary['source']}: {summary['landed']} landed, {summary['rejected']} "
        f"rejected; per vertical the tasks, rated tasks, labels and tasks judged relevant",
    )
    return summary


@flow(name="feedback", log_prints=True)
def feedback(
    dataset: str | None = None,
    replay: int = 0,
    labels: str | None = None,
    budget: int | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Rate served EBR results: load the served-results log, sample rating tasks, rate them.

    Args:
        dataset: The dataset whose served results are rated (data.dataset; empty: the config's).
        replay: First send this many sessions of feedback.replay_part through the served version.
        labels: A label file (CSV or Parquet, docs/log_schema.md) to import; empty: simulated raters.
        budget: Rating tasks to sample (feedback.budget).
        overrides: Any Hydra overrides of the retrain config (key=value), applied after the above.
    """
    params = [f"data.dataset={dataset}"] if dataset else []
    params += [f"feedback.budget={budget}"] if budget is not None else []
    cfg = load_config(params + list(overrides or []))
    return run_feedback(cfg, replay, labels)


def run_feedback(cfg: DictConfig, replay: int, labels: str | None) -> dict[str, Any]:
    """The feedback steps in order; returns (and writes) the run's report."""
    if replay < 0:
        raise ValueError(f"replay must be at least 0, got {replay}")
    if labels is not None and not Path(labels).is_file():
        raise ValueError(f"labels: {labels} is not a file")
    dataset = home.check_dataset(str(cfg.data.dataset))
    run = start_run(cfg, "feedback", dataset)
    print(f"run {run.run_id}: {run.path}")
    report: dict[str, Any] = {"run_id": run.run_id, "run_dir": str(run.path), "dataset": dataset}
    if replay:
        report["replay"] = replay_task(cfg, run.path, replay)
    report["served_log"] = load_task(cfg, run.path, run.run_id)
    report["rating_tasks"] = sample_task(cfg, run.path, run.run_id)
    report["labels"] = rate_task(cfg, run.path, run.run_id, labels)
    atomic_write_text(run.path / "report.json", json.dumps(report, indent=2, default=str))
    return report
