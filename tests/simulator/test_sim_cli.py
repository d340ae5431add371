"""`ebr simulate`."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ebr.cli import main

SMALL = [
    "--set",
    "users=300",
    "--set",
    "groups.count=30",
    "--set",
    "events.count=30",
    "--set",
    "sessions.count=300",
]


def test_simulate_writes_a_world(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = CliRunner().invoke(
        main, ["simulate", "--scale", "tiny", "--seed", "5", "--out", str(out), *SMALL]
    )
    assert result.exit_code == 0, result.output
    assert "world written to" in result.output and "name collisions" in result.output
    for name in ("users", "friendships", "documents", "memberships", "sessions", "impressions"):
        assert (out / f"{name}.parquet").is_file()
    assert (out / "ground_truth" / "intents.parquet").is_file() and (out / "report.md").is_file()


def test_default_output_goes_under_the_home(ebr_home: Path) -> None:
    result = CliRunner().invoke(main, ["simulate", "--scale", "tiny", "--seed", "2", *SMALL])
    assert result.exit_code == 0, result.output
    assert (ebr_home / "worlds" / "sim-tiny-s2" / "schema.json").is_file()  # the dataset name of the world


def test_bad_input_gives_one_clear_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--scale", "huge", "--out", str(tmp_path / "w")])
    assert result.exit_code == 2 and "unknown scale 'huge'" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("x")
    result = runner.invoke(main, ["simulate", "--scale", "tiny", "--out", str(tmp_path / "taken"), *SMALL])
    assert result.exit_code == 2 and "not a simulated world" in result.output
    result = runner.invoke(
        main, ["simulate", "--scale", "tiny", "--out", str(tmp_path / "w"), "--set", "nope=1"]
    )
    assert result.exit_code == 2 and "bad simulator override" in result.output  # checked before writing
    assert "--scale" in runner.invoke(main, ["simulate", "--help"]).output
