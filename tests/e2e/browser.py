"""Debian's headless Chromium for the e2e tier: a page's DOM once its scripts ran, and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
]  # fmt: skip
LOCAL_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"  # every other host unreachable


def _chromium() -> str:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (installed by .ci/run: apt-get install chromium)"
    return chromium


def _flags(profile: Path, budget_ms: int, local_only: bool) -> list[str]:
    extra = [LOCAL_ONLY] if local_only else []
    return [_chromium(), *FLAGS, *extra, f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}"]


def dom(url: str, profile: Path, budget_ms: int = 20000, local_only: bool = False) -> str:
    """The DOM of `url` after `budget_ms` of virtual time; `local_only`: no host but 127.0.0.1 resolves."""
    return subprocess.run(
        [*_flags(profile, budget_ms, local_only), "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    ).stdout  # fmt: skip


def screenshot(url: str, profile: Path, shot: Path, budget_ms: int = 20000) -> None:
    """A PNG of `url` at 1400x1000 written to `shot`."""
    subprocess.run(
        [*_flags(profile, budget_ms, False), f"--screenshot={shot}", url],
        capture_output=True, timeout=180, check=True,
    )  # fmt: skip
