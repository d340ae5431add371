"""Prefect flow `ingest`: a folder of log tables -> DuckDB (logic: ebr.ingestion.ingest.ingest_logs).

Run it with `ebr ingest --logs DIR`, or in Python: `ebr.flows.ingest.ingest(logs_dir="...")`. Each run gets a
folder runs/<run_id>/ (resolved config.yaml, report.json) and leaves its counts and contract results as
Prefect artifacts (`ingest-counts`, `ingest-contracts`) and in the database (`ingest_runs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ebr import home
from ebr.config import load_config
from ebr.ingestion.errors import DatabaseUnavailableError, IngestError
from ebr.ingestion.ingest import ingest_logs
from ebr.ingestion.results import IngestResult
from ebr.io import atomic_write_text
from ebr.runs import start_run


def _io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry on I/O failures only (a locked database, a disk error); bad input fails at once."""
    return isinstance(state.data, OSError | DatabaseUnavailableError)


@task(
    name="ingest-logs", retries=2, retry_delay_seconds=10, retry_condition_fn=_io_error, cache_policy=NO_CACHE
)
def ingest_task(logs_dir: str, db_path: str, cfg: dict[str, Any], run_id: str) -> IngestResult:
    return ingest_logs(Path(logs_dir), Path(db_path), cfg, run_id=run_id)


def contracts_markdown(result: IngestResult) -> str:
    """The contract results of a run as a markdown report: failed expectations with sample reasons."""
    lines = [f"# Ingestion {result.run_id}: {result.status}", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.document_columns:
        kept = ", ".join(f"`{name}` ({kind})" for name, kind in result.document_columns.items())
        lines += [f"Extra document columns kept: {kept}", ""]
    for table, outcomes in result.contracts.items():
        lines += [
            f"## {table}",
            "",
            "| expectation | rule | checked | failed | samples |",
            "| --- | --- | --- | --- | --- |",
        ]
        for o in outcomes:
            failed = "skipped: " + o["skipped"] if "skipped" in o else str(o["failed"])
            samples = "<br>".join(s.replace("|", "\\|") for s in o.get("samples", []))
            lines.append(
                f"| `{o['expectation']}` | {o['rule']} | {o.get('checked', '')} | {failed} | {samples} |"
            )
        lines.append("")
    return "\n".join(lines)


@task(name="report-ingestion", cache_policy=NO_CACHE)
def report_task(result: IngestResult, run_dir: str) -> None:
    """Publish the run's counts and contract results as Prefect artifacts and runs/<run_id>/report.json."""
    summary = result.summary()
    create_table_artifact(
        key="ingest-counts",
        table=[{"table": t, **counts} for t, counts in summary["tables"].items()],
        description=f"Ingestion {result.run_id} ({result.status}): rows read, loaded, quarantined, skipped",
    )
    create_markdown_artifact(
        key="ingest-contracts",
        markdown=contracts_markdown(result),
        description=f"Contract results of {result.run_id}",
    )
    report = summary | {"contracts": result.contracts}
    atomic_write_text(Path(run_dir) / "report.json", json.dumps(report, indent=2, default=str) + "\n")


@flow(name="ingest", log_prints=True)
def ingest(logs_dir: str, db_path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Validate and load the log tables of `logs_dir` into `db_path` (default: the home's ebr.duckdb).

    `overrides` are Hydra overrides of conf/ingest/default.yaml (e.g. `ingest.max_bad_fraction=0.1`).
    Returns the run's summary; raises IngestError (one line) if the run failed.
    """
    cfg = load_config(overrides or [], config_name="ingest/default")
    run = start_run(cfg, "ingest")
    params = OmegaConf.to_container(cfg.ingest, resolve=True)
    try:
        result = ingest_task(logs_dir, db_path or str(home.db_path()), params, run.run_id)
    except IngestError as e:
        if e.result is not None:
            report_task(e.result, str(run.path))
        raise
    report_task(result, str(run.path))
    print(f"ingest {result.run_id}: " + ", ".join(f"{t} +{c.loaded}" for t, c in result.tables.items()))
    return result.summary()
