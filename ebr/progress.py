"""Progress of long work (training epochs, batch-step shards), reported through a hook the orchestrator
installs: the retrain flow turns it into Prefect progress artifacts. Without a hook, nothing is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Reporter = Callable[[str, float], None]

_REPORTER: ContextVar[Reporter | None] = ContextVar("ebr_progress", default=None)


def report_progress(what: str, fraction: float) -> None:
    """`what` (a short name of the work, e.g. "train text") is `fraction` (0 to 1) done."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(what, min(max(float(fraction), 0.0), 1.0))


@contextmanager
def use_progress(reporter: Reporter) -> Iterator[None]:
    """Send progress reports to `reporter` for the `with` block."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)
