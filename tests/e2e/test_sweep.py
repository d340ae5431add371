"""Hydra sweeps of the retrain flow: one named, tagged flow run per job, nothing published, a losing job a
Completed run with its verdict, the comparison attached to a `sweep-summary` flow run (read from the API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ebr import home, registry
from ebr.home import PROJECT_ROOT

pytestmark = pytest.mark.e2e

READ_BACK = """
import asyncio, json
from prefect.client.orchestration import get_client
from ebr.flows.prefect_api import temporary_api

async def read():
    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        runs = await client.read_flow_runs()
        artifacts = await client.read_artifacts()
    return {
        "runs": [{"id": str(r.id), "flow": flows[r.flow_id], "name": r.name, "tags": sorted(r.tags),
                  "state": r.state_type.value} for r in runs],
        "artifacts": [{"key": a.key, "flow_run_id": str(a.flow_run_id)} for a in artifacts],
    }

with temporary_api():
    print(json.dumps(asyncio.run(read())))
"""


def _sweep(ebr_home: Path, env: dict[str, str], *args: str) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "ebr.flows.retrain", "-m", *args],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next((ebr_home / "sweeps").iterdir())


def _env(ebr_home: Path, tmp_path: Path) -> dict[str, str]:
    env = os.environ | {"EBR_HOME": str(ebr_home), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    return env


def test_sweep_runs_one_named_flow_per_job_and_compares(ebr_home: Path, tmp_path: Path) -> None:
    env = _env(ebr_home, tmp_path)
    # a floor no candidate reaches: every job loses its gate, a verdict, not a failed run
    sweep = _sweep(ebr_home, env, "experiment=smoke", "model.margin=0.1,0.3", "gate.floor=0.9999")
    sweep_id = sweep.name
    assert (sweep / "sweep-recall.png").stat().st_size > 5_000
    assert "| 0.1 | 100 |" in (sweep / "sweep.md").read_text()
    reports = [json.loads((sweep / str(job) / "report.json").read_text()) for job in (0, 1)]
    assert all(not r["gate"]["passed"] and "< floor 0.9999" in r["gate"]["reason"] for r in reports)
    dataset = reports[0]["config"]["data"]["dataset"]
    with duckdb.connect(str(home.db_path(dataset)), read_only=True) as con:
        runs = con.execute(
            "SELECT DISTINCT margin, run_id, gate_passed FROM sweep_results ORDER BY margin"
        ).fetchall()
    assert [(m, passed) for m, _, passed in runs] == [(0.1, False), (0.3, False)] and runs[0][1] != runs[1][1]
    assert registry.served_version(dataset) is None, "sweep jobs publish nothing unless asked"
    configs = sorted(home.runs_dir(dataset).glob("retrain-*/config.yaml"))
    assert len(configs) == 2 and {"margin: 0.1", "margin: 0.3"} <= {
        line.strip() for c in configs for line in c.read_text().splitlines()
    }

    read = subprocess.run(
        [sys.executable, "-c", READ_BACK],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    api = json.loads(read.stdout.strip().splitlines()[-1])
    jobs = sorted((r for r in api["runs"] if r["flow"] == "retrain"), key=lambda r: r["name"])
    expected = [
        (
            f"sweep-{sweep_id}-job{n}-margin={m}",
            sorted([f"sweep:{sweep_id}", f"job:{n}", f"model.margin={m}"]),
        )
        for n, m in ((0, 0.1), (1, 0.3))
    ]
    assert [(r["name"], r["tags"]) for r in jobs] == expected  # swept values only: not experiment, gate.floor
    assert [r["state"] for r in jobs] == ["COMPLETED", "COMPLETED"]
    (summary,) = [r for r in api["runs"] if r["flow"] == "sweep-summary"]
    assert (summary["name"], summary["tags"], summary["state"]) == (
        f"sweep-{sweep_id}-summary",
        [f"sweep:{sweep_id}"],
        "COMPLETED",
    )
    attached = {
        a["key"]: a["flow_run_id"]
        for a in api["artifacts"]
        if a["key"] in ("sweep-comparison", "picture-sweep-recall")
    }
    assert attached == {"sweep-comparison": summary["id"], "picture-sweep-recall": summary["id"]}


def test_optuna_sweep_returns_the_metric_and_compares(ebr_home: Path, tmp_path: Path) -> None:
    args = ["hparams_search=optuna", "experiment=smoke", "hydra.sweeper.n_trials=2"]
    sweep = _sweep(ebr_home, _env(ebr_home, tmp_path), *args)
    best = (sweep / "optimization_results.yaml").read_text()
    assert "model.margin" in best and "best_value" in best
    dataset = json.loads((sweep / "0" / "report.json").read_text())["config"]["data"]["dataset"]
    with duckdb.connect(str(home.db_path(dataset)), read_only=True) as con:
        values = con.execute(
            "SELECT recall_at_10 FROM sweep_results WHERE model = 'unified_ohnm' AND vertical = 'all'"
        ).fetchall()
    assert len(values) == 2
    assert f"best_value: {max(v for (v,) in values)}" in best  # the metric Optuna saw is the report's
