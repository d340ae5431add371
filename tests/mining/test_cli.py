"""`ebr mine` end to end on the simulator's tiny world (with real ingestion in the slow test)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

from ebr.cli.mine import command
from ebr.mining.rounds import format_stage

FAST = ["train.epochs=1", "train.min_steps=1", "train.batch_size=1024",
        "train.trainer.enable_progress_bar=false",
        "train.trainer.accelerator=cpu", "train.torch_threads=1"]  # fmt: skip
SPLIT = ["data.split.tune=500", "data.split.evaluate=500"]


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_mine_command_writes_run_and_tables(ebr_home: Path, tmp_path: Path, tiny_world):
    db = tmp_path / "ebr.duckdb"
    db.write_bytes(tiny_world[1].read_bytes())
    args = ["--db", str(db), "--run-id", "mine-test", "--json", *FAST, *SPLIT, "data.dataset=mined"]
    result = CliRunner().invoke(command, [*args, "experiment=mining_random", "mining.random_per_positive=3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: stdout holds the report only
    assert "contracts passed" in format_stage(report["stages"][0])
    assert report["stages"][0]["counts"]["easy_negatives"] == 3 * report["stages"][0]["counts"]["positives"]
    run = ebr_home / "datasets" / "mined" / "runs" / "mine-test"  # the run lands in its dataset
    assert json.loads((run / "report.json").read_text())["run_id"] == "mine-test"
    assert "negatives: random" in (run / "config.yaml").read_text()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id, round, status FROM mined_runs").fetchall() == [
            ("mine-test", 0, "ok")
        ]


def test_mine_command_errors_are_one_line(ebr_home: Path, tmp_path: Path, tiny_world):
    missing = CliRunner().invoke(command, ["--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 1 and "no DuckDB file" in missing.output
    db = tiny_world[1]
    bad = CliRunner().invoke(
        command, ["--db", str(db), "mining.hard.strategy=hardest", "mining.negatives=sideways"]
    )
    assert bad.exit_code == 2 and "mining.negatives" in bad.output
    unknown = CliRunner().invoke(command, ["--db", str(db), "mining.no_such_key=1"])
    assert unknown.exit_code == 2 and "mining.no_such_key" in unknown.output


@pytest.mark.e2e
def test_tiny_world_mines_hard_positives_and_hard_negatives(ebr_home: Path):
    from omegaconf import OmegaConf

    from ebr.home import PROJECT_ROOT
    from ebr.ingestion.ingest import ingest_logs
    from ebr.simulator.world import simulate

    world = simulate("tiny", 7, ebr_home / "worlds" / "tiny-s7")
    db = ebr_home / "datasets" / "mined" / "ebr.duckdb"
    ingest_logs(world, db, OmegaConf.load(PROJECT_ROOT / "conf" / "ingest" / "default.yaml"))
    overrides = [*FAST, *SPLIT, "data.dataset=mined", "mining.positives=clicks+hard",
                 "mining.easy_hard_ratio=10", "mining.hard.window=[11,100]"]  # fmt: skip
    result = CliRunner().invoke(command, ["--run-id", "mine-world", "--json", *overrides])
    assert result.exit_code == 0, result.output
    report = _last_json(result.output)
    final = report["stages"][-1]
    assert final["counts"]["easy_hard_ratio"] == 10.0 and final["hard_negatives"]["short_positives"] == 0
    assert final["counts"]["positives_by_kind"]["hard_positive"] > 0
    # the hard-positive rule recovers the searcher's intended document (ground truth, read only here)
    with duckdb.connect(str(db), read_only=True) as con:
        hard = con.execute(
            "SELECT session_id, doc_id FROM mined_positives WHERE run_id = 'mine-world' AND round = 1 "
            "AND kind = 'hard_positive'"
        ).df()
    intents = pd.read_parquet(world / "ground_truth" / "intents.parquet")
    merged = hard.merge(intents, on="session_id")
    assert len(merged) == len(hard) and (merged["doc_id"] == merged["target_doc_id"]).mean() > 0.9
