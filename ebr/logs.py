"""What the console shows: the log levels and warning filters of the `ebr` command (`ebr -v` keeps all).

Without verbose, `configure` drops the records below WARNING of the chatty dependencies (`QUIET`: bm25s'
DEBUG lines, httpx's line per request, Lightning's banners and "💡 Tip" lines, Great Expectations'
temporary folders) and the deprecation warnings raised from inside dependencies (a deprecated call made by
the platform's own code still shows). Always, Lightning's records are printed once: its logger has a console
handler of its own, so it no longer also propagates them to the root handler (Prefect's console). Each
mechanism holds whatever the import order: a filter on the logger survives a library resetting its level
when imported (bm25s sets DEBUG), and warnings are captured before a library turns the capture on. The
commands that run no flow get a plain console on the root logger; Prefect's replaces it when Prefect loads.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

QUIET = (
    "bm25s",
    "httpx",
    "httpcore",
    "great_expectations",
    "great_expectations.data_context.types.base",  # sets its own level, INFO, when imported
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
FORMAT = "%(levelname)s %(name)s: %(message)s"
_OWN = Path(__file__).resolve().parent  # the ebr package: deprecations raised from it always show


class _Console(logging.StreamHandler):  # type: ignore[type-arg]
    """The console of the commands that run no flow. Prefect, once imported, puts its own console in its
    place (its logging setup keeps the root handlers of a user's config, not one named like this)."""


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def configure(verbose: bool = False) -> None:
    """Set the console's levels and warning filters for one command; `verbose` keeps every record and
    shows the platform's own INFO lines. Call it once, first (a second call adds nothing)."""
    root = logging.getLogger()
    if not root.handlers:
        console = _Console()
        console.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(console)
    logging.getLogger("lightning").propagate = False
    if verbose:
        logging.getLogger("ebr").setLevel(logging.INFO)
        return
    for name in QUIET:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if _warnings_only not in logger.filters:
            logger.addFilter(_warnings_only)
    logging.captureWarnings(True)  # first: a later call (Great Expectations') keeps the hook below
    if getattr(warnings.showwarning, "__wrapped__", None) is None:
        warnings.showwarning = _skip_dependency_deprecations(warnings.showwarning)


def _skip_dependency_deprecations(show: Any) -> Any:
    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, DEPRECATIONS) and not Path(filename).resolve().is_relative_to(_OWN):
            return
        show(message, category, filename, lineno, file, line)

    showwarning.__wrapped__ = show  # type: ignore[attr-defined]
    return showwarning


@contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """While enabled, what the work prints on stdout (progress bars, prints) goes to stderr, so that a
    `--json` command's stdout holds its JSON document only."""
    if not enabled:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield
