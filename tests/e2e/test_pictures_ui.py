"""A retrain's picture in the Prefect UI: a markdown artifact with the PNG embedded as a data URI, rendered
as an <img> on the artifact page of a real `prefect server` in headless Chromium (screenshot kept under
test-artifacts/)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from . import browser
from .test_deployment import ARTIFACTS, prefect_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e

FLOW = """
import sys
from pathlib import Path
from prefect import flow
from ebr.evaluation import plots
from ebr.flows.retrain import picture

@flow(name="pictures")
def pictures(out: str) -> None:
    checks = [{"vertical": "people", "rule": "floor", "metric": "recall@50", "value": 0.6, "threshold": 0.5,
               "passed": True}]
    picture(plots.gate_rules(checks, Path(out) / "gate.png"), "gate rules")

pictures(sys.argv[1])
"""


def test_picture_artifact_renders_as_an_image(
    prefect_server: tuple[str, dict[str, str]],  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    api, env = prefect_server
    subprocess.run([sys.executable, "-c", FLOW, str(tmp_path)], env=env, check=True, timeout=300)
    (artifact,) = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["picture-gate"]}}}
    ).json()
    png = (tmp_path / "gate.png").read_bytes()
    assert f"(data:image/png;base64,{base64.b64encode(png).decode()})" in artifact["data"]

    url = f"{api.removesuffix('/api')}/artifacts/artifact/{artifact['id']}"
    page = browser.dom(url, tmp_path / "chrome-dom")
    assert '<img src="data:image/png;base64,' in page, "the markdown artifact's image is not rendered"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "picture-artifact-page.png"
    browser.screenshot(url, tmp_path / "chrome-shot", shot)
    assert shot.stat().st_size > 10_000
