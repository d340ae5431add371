"""End to end: the simulator's `tiny` world, ingested by `ebr ingest` into the home's real DuckDB file, and
read as a schema_version 1 folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ebr.cli.ingest import command
from ebr.schema import LOG_TABLES
from ebr.simulator import world

from .logs import query, run_ingest


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return world.simulate("tiny", 7, tmp_path_factory.mktemp("worlds") / "tiny-s7")


@pytest.mark.usefixtures("prefect_harness")
def test_tiny_world_ingests_clean_and_idempotent(tiny_world: Path, ebr_home: Path) -> None:
    folder = tiny_world
    assert (folder / "ground_truth" / "intents.parquet").exists()

    first = CliRunner().invoke(command, ["--logs", str(folder), "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output.strip().splitlines()[-1])
    db = ebr_home / "datasets" / "tiny-s7" / "ebr.duckdb"  # the folder's name
    reasons = query(
        db, "SELECT table_name, expectation, any_value(reason), count(*) FROM quarantine GROUP BY ALL"
    )
    assert reasons == [], f"the simulator's logs break their contracts: {reasons}"
    for table in LOG_TABLES:
        rows = pq.read_metadata(folder / f"{table.name}.parquet").num_rows
        assert summary["tables"][table.name] == {
            "read": rows,
            "loaded": rows,
            "quarantined": 0,
            "skipped_existing": 0,
        }
        assert query(db, f"SELECT count(*) FROM {table.name}")[0][0] == rows
    tables = {r[0] for r in query(db, "SELECT table_name FROM duckdb_tables()")}
    assert "intents" not in tables  # ground truth is never ingested

    again = CliRunner().invoke(command, ["--logs", str(folder), "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output.strip().splitlines()[-1])
    assert all(c["loaded"] == 0 and c["skipped_existing"] == c["read"] for c in summary["tables"].values())


def test_tiny_world_as_schema_version_1(tiny_world: Path, tmp_path: Path) -> None:
    """A version-1 folder still ingests, under its own verticals (people, groups, events)."""
    folder = shutil.copytree(tiny_world, tmp_path / "tiny-v1")
    (folder / "schema.json").write_text(json.dumps({"schema_version": 1}))
    db = tmp_path / "ebr.duckdb"
    result = run_ingest(folder, db, verticals=["jobs"])
    assert result.schema_version == 1
    assert query(db, "SELECT count(*) FROM quarantine") == [(0,)]
    for table in LOG_TABLES:
        assert result.tables[table.name].loaded == pq.read_metadata(folder / f"{table.name}.parquet").num_rows
    outcomes = {o["expectation"]: o for o in result.contracts["documents"]}
    in_set = outcomes["expect_column_values_to_be_in_set(vertical)"]
    assert in_set["success"] and in_set["checked"] == result.tables["documents"].read
