"""`--json` on every command that reports something: stdout is one JSON document and nothing else (Lightning's
progress bars and Prefect's lines go to stderr); `ebr retrain` without it ends with the recall table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ebr.cli import main

pytestmark = pytest.mark.e2e

DATASET = ["--dataset", "sim-tiny-s7"]  # experiment=smoke's world


def _json(args: list[str]) -> Any:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_command_prints_only_json_and_retrain_its_recall_table(ebr_home: Path, tmp_path: Path) -> None:
    report = _json(["retrain", "experiment=smoke", "--json"])
    assert report["published_version"] == "v0001" and "text" in report["recall"]

    again = CliRunner().invoke(main, ["retrain", "experiment=smoke", "--resume", report["run_id"]])
    assert again.exit_code == 0, again.output
    table = [line for line in again.stdout.splitlines() if line.startswith("  recall@10 ")]
    assert {line.split()[1] for line in table} == set(report["recall"])

    world = _json(["simulate", "scale=tiny", "simulator.users=300", "--out", str(tmp_path / "w"), "--json"])
    assert _json(["ingest", "--logs", world["path"], "--json"])["status"] == "succeeded"
    assert "recall" in _json(["train", "experiment=smoke", "train.models=[text]", "--json"])
    assert _json(["mine", "experiment=smoke", "mining.rounds=0", "--json"])["stages"]
    assert isinstance(_json(["search", *DATASET, "--query-text", "john", "--json"]), list)
    assert [v["version"] for v in _json(["versions", *DATASET, "--json"])][0] == "v0001"
    assert _json(["rollback", "v0001", *DATASET, "--json"])["served"] == "v0001"
    assert "deletions" in _json(["gc", *DATASET, "--dry-run", "--json"])
    assert isinstance(_json(["datasets", "--json"]), list)
