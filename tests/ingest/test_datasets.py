"""Datasets: each log source in its own DuckDB file (ebr/home.py), and a second source loaded into a dataset
that holds another one refused as key conflicts, with their count and an example key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ebr import home
from ebr.cli.datasets import command as datasets_command
from ebr.cli.ingest import command as ingest_command
from ebr.ingestion.errors import BadShareError
from ebr.schema import LOG_TABLES
from ebr.simulator.world import simulate

from .logs import clean_logs, query, run_ingest, write_logs

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny simulated worlds of different seeds (their ids overlap, their content differs)."""
    root = tmp_path_factory.mktemp("worlds")
    return simulate("tiny", 1, root / "sim-tiny-s1"), simulate("tiny", 2, root / "sim-tiny-s2")


def _rows(world: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    return {t.name: pq.read_metadata(world / f"{t.name}.parquet").num_rows for t in LOG_TABLES}


def test_two_worlds_load_fully_into_their_own_datasets(ebr_home: Path, worlds: tuple[Path, Path]) -> None:
    runner = CliRunner()
    for world in worlds:  # the default dataset of a folder is its name
        out = runner.invoke(ingest_command, ["--logs", str(world), "--json"])
        assert out.exit_code == 0, out.output
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["dataset"] == world.name and summary["key_conflicts"] == {}
        assert summary["db_path"] == str(home.db_path(world.name))
        assert {t: c["loaded"] for t, c in summary["tables"].items()} == _rows(world)
    listed = runner.invoke(datasets_command, ["--json"])
    assert listed.exit_code == 0, listed.output
    found = {d["dataset"]: d for d in json.loads(listed.stdout)}
    assert set(found) == {"sim-tiny-s1", "sim-tiny-s2"}
    for world in worlds:
        assert found[world.name]["tables"] == _rows(world)
        assert found[world.name]["last_ingest"]["status"] == "succeeded"
        assert found[world.name]["served_version"] is None
    text = runner.invoke(datasets_command, [])
    assert text.exit_code == 0 and "sim-tiny-s1  served -" in text.output


def test_the_same_two_worlds_in_one_dataset_are_key_conflicts(
    ebr_home: Path, worlds: tuple[Path, Path]
) -> None:
    runner = CliRunner()
    first = runner.invoke(ingest_command, ["--logs", str(worlds[0]), "--dataset", "shared"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(ingest_command, ["--logs", str(worlds[1]), "--dataset", "shared", "--json"])
    assert second.exit_code == 1
    [line] = [ln for ln in second.output.splitlines() if ln.startswith("Error:")]
    users = _rows(worlds[1])["users"]
    assert (
        f"users: {users} of {users} rows are key conflicts with rows already loaded (e.g. user_id=1)" in line
    )
    assert line.endswith("load this source into its own dataset (data.dataset=NAME / --dataset NAME)")
    summary = json.loads(second.stdout.strip().splitlines()[-1])  # the error line is on stderr
    assert summary["key_conflicts"]["users"] == {"rows": users, "example": "user_id=1"}
    db = home.db_path("shared")
    assert query(db, "SELECT count(*) FROM users")[0][0] == _rows(worlds[0])["users"]  # nothing loaded


def test_a_conflict_among_other_failures_is_counted_apart(tmp_path: Path) -> None:
    import pandas as pd

    db = tmp_path / "ebr.duckdb"
    run_ingest(write_logs(tmp_path / "day1", clean_logs()), db)
    tables = clean_logs()
    users = tables["users"]
    renamed = users.assign(name=users["name"] + " Jr")  # the same keys with other content
    fresh = users.iloc[[0]].assign(user_id=99, name="")  # a new key that breaks another rule
    tables["users"] = pd.concat([renamed, fresh], ignore_index=True)
    with pytest.raises(BadShareError) as raised:
        run_ingest(write_logs(tmp_path / "day2", tables), db)
    n = len(users)
    message = str(raised.value)
    assert "\n" not in message
    assert (
        f"users: {n + 1} of {n + 1} rows (100.0%) failed their contract, {n} of them key conflicts with "
        "rows already loaded (e.g. user_id=1)" in message
    )
    assert raised.value.result.key_conflicts["users"].rows == n


def test_the_cli_dataset_option_reaches_its_database(ebr_home: Path, clean_dir: Path) -> None:
    out = CliRunner().invoke(ingest_command, ["--logs", str(clean_dir), "--dataset", "team-a"])
    assert out.exit_code == 0, out.output
    assert query(home.db_path("team-a"), "SELECT count(*) FROM documents")[0][0] == 6
    assert not home.db_path("logs").exists()  # not the folder's default dataset
    bad = CliRunner().invoke(ingest_command, ["--logs", str(clean_dir), "--dataset", "Team A"])
    assert bad.exit_code == 2 and "--dataset" in bad.output and "data.dataset" in bad.output


def test_commands_on_a_missing_dataset_name_the_ones_there_are(ebr_home: Path, clean_dir: Path) -> None:
    from ebr.cli.versions import command as versions_command

    assert CliRunner().invoke(ingest_command, ["--logs", str(clean_dir)]).exit_code == 0
    out = CliRunner().invoke(versions_command, ["--dataset", "nope"])
    assert out.exit_code == 1
    [line] = [ln for ln in out.output.splitlines() if ln.startswith("Error:")]
    assert "no dataset nope" in line and "(datasets: logs)" in line


def test_a_home_from_before_datasets_gets_a_hint(ebr_home: Path, clean_dir: Path) -> None:
    ebr_home.mkdir(parents=True)
    (ebr_home / "ebr.duckdb").write_bytes(b"")  # the old layout's file, left where it is
    out = CliRunner().invoke(datasets_command, [])
    assert out.exit_code == 0 and "is from before datasets and is no longer read" in out.output
    assert (ebr_home / "ebr.duckdb").exists()
