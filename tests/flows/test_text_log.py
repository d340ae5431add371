"""Any search log: a text-only log with two verticals that are not people/groups/events, long bodies and
anonymous sessions ingests, retrains, passes the gate on the verticals it has, publishes, and answers
`ebr search` (with and without --vertical) and the HTTP API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from ebr import registry
from ebr.cli import main
from ebr.flows.retrain import retrain
from ebr.retrieval.api import create_app
from ebr.retrieval.config import load_engine_config

from .text_log import write_text_log

pytestmark = pytest.mark.e2e

FAST = [
    "experiment=text_search",
    "train.epochs=2",
    "train.min_steps=1",
    "train.trainer.enable_progress_bar=false",
    "data.split.tune=300",
    "data.split.evaluate=300",
    "index.factories=['IVF{nlist},Flat']",
    "index.nprobes=[1,4,16]",
    "serving.max_sessions=200",
]


@pytest.mark.usefixtures("prefect_harness")
def test_a_text_log_of_any_verticals_retrains_publishes_and_serves(ebr_home: Path, tmp_path: Path) -> None:
    logs = write_text_log(tmp_path / "logs")
    report = retrain(overrides=[*FAST, f"data.logs_dir={logs}"])
    assert report["ingest"]["tables"]["documents"]["quarantined"] == 0
    assert report["ingest"]["document_columns"] == {"body": "text"}
    assert report["features"]["truncated_texts"]["documents"] == 1  # the 100,000+ character body
    assert report["features"]["anonymous_sessions"] == 1600
    assert set(report["recall"]["text"]) == {"jobs", "papers", "all"}
    gate = report["gate"]
    assert gate["passed"], gate["reason"]
    assert {c["vertical"] for c in gate["checks"]} == {"jobs", "papers"}
    assert {c["rule"] for c in gate["checks"]} >= {"floor", "bm25", "text"}
    assert report["dataset"] == "logs"  # the folder's name
    assert report["published_version"] == "v0001" == registry.served_version("logs")
    served = json.loads((registry.served_version_dir("logs") / registry.MANIFEST).read_text())["serving"]
    assert set(served["verticals"]) == {"jobs", "papers"}

    runner = CliRunner()
    for args in (["--vertical", "papers"], []):  # without --vertical: the version's default vertical
        out = runner.invoke(
            main, ["search", "--dataset", "logs", *args, "--query-text", "protein w010", "--k", "5", "--json"]
        )
        assert out.exit_code == 0, out.output
        assert 0 < len(json.loads(out.output.strip().splitlines()[-1])) <= 5
    with TestClient(create_app(load_engine_config(), watch=False, dataset="logs")) as client:
        answer = client.post("/search", json={"vertical": "jobs", "query_text": "engineer w001", "limit": 5})
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == "v0001" and answer.json()["results"]
