"""No orphans: a flow command killed with SIGKILL takes its temporary Prefect API server with it
(ebr/flows/prefect_api.py: the server is the command's child with the parent-death signal set)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ebr.home import PROJECT_ROOT

CHILD = textwrap.dedent(
    """
    import time
    from prefect import flow
    from ebr.flows.prefect_api import temporary_api

    @flow
    def tiny() -> int:
        return 1

    with temporary_api():  # as the flow commands run their flows
        assert tiny() == 1
        print("flow done", flush=True)
        time.sleep(600)
    """
)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_kill_9_of_a_flow_command_leaves_no_prefect_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(PROJECT_ROOT)}
    env |= {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "DO_NOT_TRACK": "1"}
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = []
        for line in parent.stdout:  # the flow ran against the temporary server
            lines.append(line)
            if "flow done" in line:
                break
        assert parent.poll() is None, "".join(lines)
        servers = _children(parent.pid)
        assert servers, "no temporary server was started"
        cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in servers]
        assert any(b"prefect.server.api.server:create_app" in c for c in cmdlines), cmdlines
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in servers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in servers if _alive(p)], "the temporary Prefect server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
