"""Progress and log lines of the batch steps reach Prefect: progress artifacts, and the `ebr.*` loggers'
lines in the flow run's logs (read back from a real temporary Prefect API), once each."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from prefect import flow
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler, APILogWorker

from ebr.ann.quantize import tune
from ebr.config import retrain_defaults
from ebr.datasets.synthetic import clustered_dataset
from ebr.flows.retrain import ProgressArtifacts, ebr_logs_to_prefect
from ebr.runners import Shards

pytestmark = pytest.mark.usefixtures("prefect_harness")


@flow(name="tune-with-progress")
def tune_flow() -> str:
    data = clustered_dataset(n_docs=2000, n_queries=50, d=16, n_clusters=20, seed=1)
    cfg = replace(
        retrain_defaults().index,
        factories=("IVF{nlist},PQ{m}x{nbits}", "IVF{nlist},Flat"),
        nlists=(16,),
        nprobes=(1, 4),
        pq_bytes=8,
    )
    with ebr_logs_to_prefect():
        assert sum(isinstance(h, APILogHandler) for h in logging.getLogger("ebr").handlers) == 1
        tune(data.docs, data.queries, cfg, data.targets, Shards(progress=ProgressArtifacts()), "ann test")
    return str(FlowRunContext.get().flow_run.id)


def test_step_lines_and_progress_reach_the_flow_run() -> None:
    flow_run_id = tune_flow()
    APILogWorker.drain_all(timeout=10)  # the logs sent in the background
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    messages = [log.message for log in logs if log.name.startswith("ebr.")]
    tuned = [m for m in messages if m.startswith("ann test: IVF16,PQ8x8 (inner_product) built and measured")]
    assert len(tuned) == 1, messages  # the step's own line, once
    assert [m for m in messages if m.startswith("ann test: ") and m.endswith("%")] == [
        "ann test: 50%",
        "ann test: 100%",
    ]
    progress = Artifact.get("progress-ann-test")
    assert progress is not None and float(progress.data) == 100.0
    assert not any(
        isinstance(h, APILogHandler) for h in logging.getLogger("ebr").handlers
    )  # for the run only


def test_nothing_added_when_prefect_extra_loggers_already_has_ebr() -> None:
    logger = logging.getLogger("ebr")
    existing = APILogHandler()
    logger.addHandler(existing)
    try:
        with ebr_logs_to_prefect():
            assert [h for h in logger.handlers if isinstance(h, APILogHandler)] == [existing]
    finally:
        logger.removeHandler(existing)
