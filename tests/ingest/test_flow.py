"""The Prefect flow and `ebr ingest`, against a temporary Prefect API and a real DuckDB file in the home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebr.cli.ingest import command
from ebr.ingestion.errors import BadShareError, DatabaseUnavailableError, MalformedInputError

from .logs import clean_logs, query, write_logs

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_flow_loads_reports_and_publishes_artifacts(ebr_home: Path, clean_dir: Path) -> None:
    from prefect.artifacts import Artifact

    from ebr.flows.ingest import ingest

    summary = ingest(logs_dir=str(clean_dir))

    db = ebr_home / "datasets" / "logs" / "ebr.duckdb"  # the dataset of the folder logs/: its name
    assert summary["db_path"] == str(db) and summary["status"] == "succeeded"
    assert summary["dataset"] == "logs"
    assert summary["tables"]["impressions"] == {
        "read": 7,
        "loaded": 7,
        "quarantined": 0,
        "skipped_existing": 0,
    }
    assert query(db, "SELECT count(*) FROM impressions")[0][0] == 7
    run_dir = ebr_home / "datasets" / "logs" / "runs" / summary["run_id"]
    assert (run_dir / "config.yaml").exists()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run_id"] == summary["run_id"] and "documents" in report["contracts"]
    assert report["dataset"] == "logs"

    counts = Artifact.get("ingest-counts")
    assert counts is not None and summary["run_id"] in counts.description
    rows = json.loads(counts.data) if isinstance(counts.data, str) else counts.data
    assert {"table": "sessions", "read": 3, "loaded": 3, "quarantined": 0, "skipped_existing": 0} in rows
    contracts = Artifact.get("ingest-contracts")
    assert contracts is not None and "expect_column_values_to_be_null(position_gap)" in contracts.data


def test_flow_failure_still_reports(ebr_home: Path, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from ebr.flows.ingest import ingest

    tables = clean_logs()
    tables["sessions"] = tables["sessions"].assign(vertical="videos")
    with pytest.raises(BadShareError, match="sessions: 3 of 3 rows"):
        ingest(logs_dir=str(write_logs(tmp_path / "logs", tables)))
    counts = Artifact.get("ingest-counts")
    assert counts is not None and "(failed)" in counts.description


def test_flow_retries_on_io_errors_only() -> None:
    import duckdb
    from prefect.states import Failed

    from ebr.flows.ingest import io_failure

    assert io_failure(
        None, None, Failed(data=DatabaseUnavailableError("ebr.duckdb: cannot open the database"))
    )
    assert io_failure(None, None, Failed(data=OSError("disk full")))
    assert io_failure(None, None, Failed(data=duckdb.IOException("Could not set lock on file")))
    assert not io_failure(None, None, Failed(data=MalformedInputError("sessions.csv: empty file")))
    assert not io_failure(None, None, Failed(data=BadShareError("users: 3 of 3 rows are key conflicts")))
    assert not io_failure(None, None, Failed(data=ValueError("data.logs_dir: /x is not a folder")))


def test_cli_json_last_line(ebr_home: Path, clean_dir: Path) -> None:
    result = CliRunner().invoke(command, ["--logs", str(clean_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["tables"]["documents"] == {"read": 6, "loaded": 6, "quarantined": 0, "skipped_existing": 0}
    assert Path(summary["db_path"]) == ebr_home / "datasets" / "logs" / "ebr.duckdb"

    again = CliRunner().invoke(command, ["--logs", str(clean_dir), "--json"])
    summary = json.loads(again.output.strip().splitlines()[-1])
    assert all(c["loaded"] == 0 and c["skipped_existing"] == c["read"] for c in summary["tables"].values())


def test_cli_failure_is_one_line_and_non_zero(ebr_home: Path, tmp_path: Path) -> None:
    logs = write_logs(tmp_path / "logs", clean_logs())
    (logs / "sessions.parquet").write_text("not parquet")
    result = CliRunner().invoke(command, ["--logs", str(logs)])
    assert result.exit_code == 1
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert "sessions.parquet: cannot be read as parquet" in line


def test_cli_overrides_and_bad_override(ebr_home: Path, tmp_path: Path) -> None:
    tables = clean_logs()
    tables["sessions"] = tables["sessions"].assign(vertical=["videos", "people", "people"])
    logs = write_logs(tmp_path / "logs", tables)
    strict = CliRunner().invoke(command, ["--logs", str(logs), "--json"])
    assert strict.exit_code == 1 and "above max_bad_fraction 0.05" in strict.output
    assert (
        json.loads(strict.output.strip().splitlines()[-2])["status"] == "failed"
    )  # JSON, then the error line
    lenient = CliRunner().invoke(command, ["--logs", str(logs), "--json", "ingest.max_bad_fraction=0.5"])
    assert lenient.exit_code == 0, lenient.output
    assert json.loads(lenient.output.strip().splitlines()[-1])["tables"]["sessions"]["quarantined"] == 1
    typo = CliRunner().invoke(command, ["--logs", str(logs), "ingest.max_bad_fractoin=0.5"])
    assert typo.exit_code == 2 and "max_bad_fractoin" in typo.output
