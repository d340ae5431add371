"""A Hydra sweep over margin and easy:hard ratio: one flow run per job, nothing published, one comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ebr.flows.sweep import comparison_markdown, job_rows
from ebr.home import PROJECT_ROOT

pytestmark = pytest.mark.e2e


def _report(margin: float, ratio: float, recall: float) -> dict:
    return {
        "run_id": f"r{margin}-{ratio}",
        "config": {"model": {"margin": margin}, "mining": {"easy_hard_ratio": ratio}},
        "gate": {"passed": True},
        "recall": {"unified_ohnm": {"people": {"10": recall, "100": 1.0}, "all": {"10": recall, "100": 1.0}}},
    }


def test_comparison_table_has_one_row_per_setting() -> None:
    rows = job_rows("s", 0, _report(0.1, 10, 0.5)) + job_rows("s", 1, _report(0.3, 10, 0.6))
    markdown = comparison_markdown(pd.DataFrame(rows), "unified_ohnm")
    assert "| 0.1 | 10 | 0.5000 | 0.5000 |" in markdown
    assert "| 0.3 | 10 | 0.6000 | 0.6000 |" in markdown


def test_sweep_runs_one_flow_per_job_and_compares(ebr_home: Path, tmp_path: Path) -> None:
    env = os.environ | {"EBR_HOME": str(ebr_home), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "ebr.flows.retrain", "-m", "experiment=smoke", "model.margin=0.1,0.3"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = next((ebr_home / "sweeps").iterdir())
    assert (sweep / "recall.png").stat().st_size > 5_000
    assert "| 0.1 | 100 |" in (sweep / "sweep.md").read_text()
    with duckdb.connect(str(ebr_home / "ebr.duckdb"), read_only=True) as con:
        runs = con.execute("SELECT DISTINCT margin, run_id FROM sweep_results ORDER BY margin").fetchall()
    assert [m for m, _ in runs] == [0.1, 0.3] and runs[0][1] != runs[1][1]
    assert not (ebr_home / "serving.json").exists(), "sweep jobs publish nothing unless asked"
    configs = sorted((ebr_home / "runs").glob("retrain-*/config.yaml"))
    assert len(configs) == 2 and {"margin: 0.1", "margin: 0.3"} <= {
        line.strip() for c in configs for line in c.read_text().splitlines()
    }


def test_optuna_sweep_returns_the_metric_and_compares(ebr_home: Path, tmp_path: Path) -> None:
    env = os.environ | {"EBR_HOME": str(ebr_home), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    args = ["-m", "hparams_search=optuna", "experiment=smoke", "hydra.sweeper.n_trials=2"]
    done = subprocess.run(
        [sys.executable, "-m", "ebr.flows.retrain", *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sweep = next((ebr_home / "sweeps").iterdir())
    best = (sweep / "optimization_results.yaml").read_text()
    assert "model.margin" in best and "best_value" in best
    with duckdb.connect(str(ebr_home / "ebr.duckdb"), read_only=True) as con:
        values = con.execute(
            "SELECT recall_at_10 FROM sweep_results WHERE model = 'unified_ohnm' AND vertical = 'all'"
        ).fetchall()
    assert len(values) == 2
    assert f"best_value: {max(v for (v,) in values)}" in best  # the metric Optuna saw is the report's


def test_report_metric_names_a_missing_key() -> None:
    from ebr.flows.retrain import report_metric

    report = {"recall": {"unified": {"all": {"10": 0.5}}}}
    assert report_metric(report, "recall.unified.all.10") == 0.5
    with pytest.raises(KeyError, match=r"optimized_metric: 'recall.text.all.10' is not in .*\(no 'text'\)"):
        report_metric(report, "recall.text.all.10")
