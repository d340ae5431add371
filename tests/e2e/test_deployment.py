"""A user's path through Prefect: a real local server, the deployments served, a run triggered with
`prefect deployment run retrain/retrain -p ...`, its artifacts read back through the API, and the flow run
page rendered in headless Chromium (Debian's package; the screenshot is kept under test-artifacts/)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ebr.home import PROJECT_ROOT

from . import browser

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
EXPECTED_ARTIFACTS = {
    "resolved-config",
    "ingest-counts",
    "training-summary",
    "mined-tables",
    "recall-table",
    "ann-operating-points",
    "serving-templates",  # the templates calibrated through the engine
    "query-policy",  # the stages trained around the engine before the gate (issue 15)
    "ranker",
    "relevance-filter",
    "index-selection",
    "recall-gate",
    "publication",
    "progress-train-text",  # a progress artifact of a long step (the text tower's training)
    "progress-ann-text",  # the ANN tuning of the text tower's embeddings
    "picture-recall",  # the pictures (ebr/evaluation/plots.py) as markdown artifacts
    "picture-loss-towers",
    "picture-ann-text",
    "picture-gate",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def prefect_server(tmp_path: Path, ebr_home: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` on a free loopback port, with its own PREFECT_HOME."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "EBR_HOME": str(ebr_home),
    }
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 180, "the Prefect server")
        yield api, env
    finally:
        _stop(server)
        log.close()


def test_deployment_run_from_the_cli_shows_in_the_ui(
    prefect_server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    api, env = prefect_server
    serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "ebr.flows.deployments"],
        cwd=PROJECT_ROOT, env=env, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:

        def deployed() -> bool:
            names = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return {d["name"] for d in names} >= {"retrain", "nightly"}

        _wait(deployed, 180, "the served deployments")
        nightly = next(
            d for d in httpx.post(f"{api}/deployments/filter", json={}).json() if d["name"] == "nightly"
        )
        assert nightly["schedules"] and nightly["paused"], "retrain/nightly must be created paused (opt-in)"

        run = subprocess.run(
            [
                str(BIN / "prefect"), "deployment", "run", "retrain/retrain",
                "-p", "margin=0.3", "-p", 'overrides=["experiment=smoke"]', "-p", "dataset=deployed",
                "--watch", "--watch-timeout", "900",
            ],
            env=env, capture_output=True, text=True, timeout=1000,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
        flow_run = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
        assert flow_run["state"]["type"] == "COMPLETED"
        assert flow_run["parameters"]["margin"] == 0.3
        home = Path(env["EBR_HOME"]) / "datasets"
        assert [p.name for p in home.iterdir()] == ["deployed"]  # -p dataset=NAME: its own dataset
        assert (home / "deployed" / "serving.json").is_file()

        artifacts = httpx.post(
            f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        ).json()
        assert {a["key"] for a in artifacts} >= EXPECTED_ARTIFACTS

        ARTIFACTS.mkdir(exist_ok=True)
        url = f"{api.removesuffix('/api')}/runs/flow-run/{flow_run_id}"
        page = browser.dom(url, tmp_path / "chrome-dom")
        assert flow_run["name"] in page, "the flow run page does not show the run"
        shot = ARTIFACTS / "flow-run-page.png"
        browser.screenshot(url, tmp_path / "chrome-shot", shot)
        assert shot.stat().st_size > 10_000
    finally:
        _stop(serve)
        serve_log.close()
