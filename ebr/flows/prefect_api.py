"""A temporary Prefect API for the commands that run flows, supervised so that it dies with the command.

Without PREFECT_API_URL, Prefect 3 starts a temporary API server (`SubprocessASGIServer`, a uvicorn child
process) and stops it at exit, which a `kill -9` of the command skips: the server was left running. The
flow commands (`ebr ingest`, `ebr retrain`) therefore start that server themselves (`temporary_api`, once
their config is validated: a typo fails before any server starts), the way Prefect does (same uvicorn
command and environment), but with the Linux parent-death signal set in the child (`prctl(PR_SET_PDEATHSIG,
SIGKILL)` between fork and exec): the kernel kills it when the command dies, however it dies (strictly:
when the thread that started it ends; the flow commands start it from the thread that runs them). The command
points Prefect at it (settings and environment, so that its own children use it too) and stops it on a
normal exit. When an API is configured (PREFECT_API_URL, a profile, the test harness) nothing is started.
Used by the CLI's flow commands and by `python -m ebr.flows.retrain` (Hydra's entry point).
"""

from __future__ import annotations

import ctypes
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> Callable[[], None]:
    """A `preexec_fn` making the child get SIGKILL when `parent` dies (Linux; elsewhere a no-op)."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)

    return preexec


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(process: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"temporary Prefect API at {url} exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"temporary Prefect API at {url}: not healthy after {timeout_s:.0f} s")


def _global_settings() -> AbstractContextManager[Any]:
    """The current settings made the default of every thread too (as Prefect's own test harness does)."""
    import prefect.context

    return prefect.context._temporary_global_settings_context(prefect.context.get_settings_context())


def _drain() -> None:
    """Send the logs and events still queued to the API before it stops (as Prefect's test harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # the worker never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


@contextmanager
def temporary_api() -> Iterator[str | None]:
    """Serve a Prefect API for the block, unless one is configured; yields its URL (None when configured)."""
    import prefect
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url:
        yield None
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **settings.to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent)]
    command += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    process = subprocess.Popen(command, env=env, preexec_fn=die_with_parent(os.getpid()))
    try:
        _wait_healthy(process, url, settings.server.ephemeral.startup_timeout_seconds)
        os.environ["PREFECT_API_URL"] = url  # for the command's own child processes
        with temporary_settings({PREFECT_API_URL: url}), _global_settings():
            try:
                yield url
            finally:
                _drain()
    finally:
        os.environ.pop("PREFECT_API_URL", None)  # unset before: no API was configured
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
