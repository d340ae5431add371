"""Prefect flow `ingest`: a folder of log tables -> DuckDB (logic: ebr.ingestion.ingest.ingest_logs).

Run it with `ebr ingest --logs DIR [--dataset NAME]`, or in Python: `ebr.flows.ingest.ingest(logs_dir=...)`.
The logs land in a dataset (ebr/home.py: its own DuckDB file, runs and versions; by default the folder's
name). Each run gets a folder runs/<run_id>/ in the dataset (resolved config.yaml, report.json) and leaves
its counts and contract results as Prefect artifacts (`ingest-counts`, `ingest-contracts`) and in the
database (`ingest_runs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from omegaconf import OmegaConf
from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ebr import home
from ebr.config import load_config
from ebr.contracts.docs import publish_or_warn
from ebr.ingestion.errors import DatabaseUnavailableError, IngestError
from ebr.ingestion.ingest import ingest_logs
from ebr.ingestion.results import IngestResult
from ebr.io import atomic_write_text
from ebr.runs import start_run


def io_failure(task: Any, task_run: Any, state: Any) -> bool:
    """A task's `retry_condition_fn`: retry I/O failures only (a locked database, a disk error); bad input,
    a failed contract, the gate and config errors are deterministic and fail at once."""
    return isinstance(state.data, OSError | DatabaseUnavailableError | duckdb.IOException)


@task(
    name="ingest-logs",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=io_failure,
    cache_policy=NO_CACHE,
)
def ingest_task(logs_dir: str, db_path: str, cfg: dict[str, Any], run_id: str) -> IngestResult:
    return ingest_with_docs(Path(logs_dir), Path(db_path), cfg, run_id)


def ingest_with_docs(logs_dir: Path, db_path: Path, cfg: Any, run_id: str) -> IngestResult:
    """`ingest_logs`, then its Data Docs (for a failed run too, before its IngestError goes on)."""
    try:
        result = ingest_logs(logs_dir, db_path, cfg, run_id=run_id)
    except IngestError as e:
        if e.result is not None:
            publish_data_docs(e.result)
        raise
    publish_data_docs(result)
    return result


def publish_data_docs(result: IngestResult) -> None:
    """Publish the run's validations to the Data Docs beside its database (ebr/contracts/docs.py) and set
    `result.data_docs`; here, as ingest_logs writes no file from Python (tests/ingest/test_ingest_faults.py).
    The docs are an addition: a failure to write them is logged, the run stands."""
    result.data_docs = publish_or_warn(result.db_path, result.run_id, result.validations)


def data_docs_link(key: str, index: Path) -> None:
    """A link artifact to the Great Expectations Data Docs (ebr/contracts/docs.py) once they exist."""
    if index.is_file():
        create_link_artifact(key=key, link=index.as_uri(), link_text="Data Docs", description=str(index))


def contracts_markdown(result: IngestResult) -> str:
    """The contract results of a run as a markdown report: failed expectations with sample reasons."""
    lines = [f"# Ingestion {result.run_id}: {result.status}", ""]
    if result.error:
        lines += [f"**Error:** {result.error}", ""]
    if result.data_docs:
        lines += [f"Great Expectations Data Docs: {Path(result.data_docs).as_uri()}", ""]
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
def report_task(result: IngestResult, run_dir: str, dataset: str) -> None:
    """Publish the run's counts and contract results as Prefect artifacts and runs/<run_id>/report.json."""
    summary = result.summary() | {"dataset": dataset}
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
    if result.data_docs:
        data_docs_link("ingest-data-docs", Path(result.data_docs))
    report = summary | {"contracts": result.contracts}
    atomic_write_text(Path(run_dir) / "report.json", json.dumps(report, indent=2, default=str) + "\n")


@flow(name="ingest", log_prints=True)
def ingest(
    logs_dir: str,
    dataset: str | None = None,
    db_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Validate the log tables of a folder and load them into a dataset's database, all or nothing.

    Returns the run's summary; raises IngestError (one line) if the run failed.

    Args:
        logs_dir: The folder of log tables (<table>.parquet|.csv|.jsonl, or a folder <table>/ of parts).
        dataset: The dataset to load into, with its own database, runs and versions (empty: the folder's
            name, lowercased; a simulated world's folder is named sim-<scale>-s<seed>).
        db_path: A DuckDB file to load into instead of the dataset's.
        overrides: Hydra overrides of conf/ingest/default.yaml, e.g. ingest.max_bad_fraction=0.1.
    """
    name = home.check_dataset(dataset) if dataset else home.folder_dataset(logs_dir)
    cfg = load_config(overrides or [], config_name="ingest/default")
    run = start_run(cfg, "ingest", name)
    params = OmegaConf.to_container(cfg.ingest, resolve=True)
    try:
        result = ingest_task(logs_dir, db_path or str(home.db_path(name)), params, run.run_id)
    except IngestError as e:
        if e.result is not None:
            report_task(e.result, str(run.path), name)
        raise
    report_task(result, str(run.path), name)
    print(f"ingest {result.run_id}: " + ", ".join(f"{t} +{c.loaded}" for t, c in result.tables.items()))
    return result.summary() | {"dataset": name}
