"""The CLI's front door: a typo fails at once with Hydra's short error and starts nothing; `--cfg job`;
the Prefect API starts only after validation; `ebr simulate`'s overrides; the console's log filters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ebr.cli import main
from ebr.home import PROJECT_ROOT


class ApiStarted(Exception):
    """Raised by the recording stand-in of `temporary_api` when a command starts its Prefect API."""


@pytest.fixture
def api_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each start of a temporary Prefect API (and stops the command there)."""
    from ebr.flows import prefect_api

    starts: list[str] = []

    @contextmanager
    def recording() -> Iterator[None]:
        starts.append("started")
        raise ApiStarted
        yield

    monkeypatch.setattr(prefect_api, "temporary_api", recording)
    return starts


def _runs(home: Path) -> list[Path]:
    return [p for runs in home.rglob("runs") for p in runs.iterdir()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["retrain", "model.margn=0.3"],
            ["Could not override 'model.margn'", "Key 'margn' not in 'ModelConfig'"],
        ),
        (["retrain", "experiment=smok"], ["Could not find 'experiment/smok'", "smoke, text_search"]),
        (["retrain", "model.margin=abc"], ["model.margin=abc", "could not be converted to Float"]),
        (["retrain", "data.logs_dir=/no/such/logs"], ["data.logs_dir=/no/such/logs: not a folder"]),
        (["retrain", "--resume", "retrain-nope"], ["no run retrain-nope"]),
        (["retrain", "-m", "model.margn=0.1,0.3"], ["Could not override 'model.margn'"]),
        (["train", "model.margn=0.3"], ["Key 'margn' not in 'ModelConfig'"]),
        (["mine", "mining.easy_hard_rato=10"], ["Key 'easy_hard_rato' not in 'MiningConfig'"]),
    ],
)
def test_a_typo_is_a_usage_error_before_anything_starts(
    ebr_home: Path, api_starts: list[str], args: list[str], expected: list[str]
) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert all(part in error for part in expected), error
    assert "Traceback" not in result.output and not api_starts and not _runs(ebr_home)


def test_an_ingest_typo_starts_no_prefect_api(ebr_home: Path, tmp_path: Path, api_starts: list[str]) -> None:
    result = CliRunner().invoke(main, ["ingest", "--logs", str(tmp_path), "ingest.max_bad_fractoin=0.5"])
    assert result.exit_code == 2 and "Key 'max_bad_fractoin' not in 'IngestSchema'" in result.output
    assert not api_starts and not _runs(ebr_home)


def test_an_unknown_flag_is_a_flag_error(ebr_home: Path, api_starts: list[str]) -> None:
    result = CliRunner().invoke(main, ["retrain", "--jsn"])
    assert result.exit_code == 2 and "No such option '--jsn'" in result.output and not api_starts


def test_cfg_job_prints_the_composed_config(ebr_home: Path, api_starts: list[str]) -> None:
    result = CliRunner().invoke(main, ["retrain", "--cfg", "job", "experiment=smoke", "model.margin=0.3"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["margin"] == 0.3 and cfg["data"]["scale"] == "tiny" and cfg["train"]["epochs"] == 1
    assert not api_starts and not _runs(ebr_home)


@pytest.mark.parametrize(
    "args",
    [["retrain", "experiment=smoke", "--json"], ["ingest", "--logs", "{logs}", "--json"]],
    ids=["retrain", "ingest"],
)
def test_a_valid_flow_command_starts_its_api_after_validation(
    ebr_home: Path, tmp_path: Path, api_starts: list[str], args: list[str]
) -> None:
    result = CliRunner().invoke(main, [a.format(logs=tmp_path) for a in args])
    assert isinstance(result.exception, ApiStarted) and api_starts == ["started"]


SMALL = ["simulator.users=300", "simulator.groups.count=30", "simulator.events.count=30"]


def test_simulate_takes_overrides_and_json(ebr_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "world"
    args = ["simulate", "scale=tiny", "seed=3", *SMALL, "simulator.sessions.count=300", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["path"] == str(out) and doc["report"]["counts"]["users"] == 300
    assert "seed: 3" in (out / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("simulator.nope=1", "bad simulator override"),
        ("simulator.users=0", "simulator.users must be a positive integer"),
        ("users=10", "expected scale=NAME, seed=N or simulator.KEY=VALUE"),
        ("scale=huge", "unknown scale 'huge'"),
        ("seed=x", "the seed is an integer"),
    ],
)
def test_simulate_refuses_bad_overrides_before_writing(tmp_path: Path, override: str, message: str) -> None:
    result = CliRunner().invoke(main, ["simulate", override, "--out", str(tmp_path / "w")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "w").exists()


LOGGING = textwrap.dedent(
    """
    import sys
    import warnings

    from ebr.logs import configure

    configure(verbose=sys.argv[1] == "-v")

    import bm25s
    import lightning
    from lightning.fabric.utilities.rank_zero import LightningDeprecationWarning
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    bm25s.BM25().index(bm25s.tokenize(["a red cat", "a blue dog"], show_progress=False), show_progress=False)
    Trainer(accelerator="cpu", logger=CSVLogger(sys.argv[2]), enable_progress_bar=False)
    warnings.warn_explicit("dependency api is deprecated", LightningDeprecationWarning, lightning.__file__, 1)
    own = configure.__code__.co_filename  # ebr/logs.py
    warnings.warn_explicit("own api is deprecated", LightningDeprecationWarning, own, 1)
    """
)


def test_the_console_drops_dependency_noise_and_verbose_keeps_it(tmp_path: Path) -> None:
    runs = {
        flag: subprocess.Popen(
            [sys.executable, "-c", LOGGING, flag, str(tmp_path / flag)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ("-q", "-v")
    }
    out = {flag: p.communicate(timeout=240) for flag, p in runs.items()}
    assert all(p.returncode == 0 for p in runs.values()), out
    quiet, verbose = out["-q"][1], out["-v"][1]
    noise = ("DEBUG bm25s: Building index", "GPU available", "💡 Tip:", "dependency api is deprecated")
    assert not [n for n in noise if n in quiet], quiet
    assert all(n in verbose for n in noise), verbose
    assert "own api is deprecated" in quiet  # the platform's own deprecations always show
    assert verbose.count("💡 Tip:") == 1  # once: Lightning's own handler, not also the root's
