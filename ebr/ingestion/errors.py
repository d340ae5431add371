"""The errors of an ingestion run: one-line messages, carrying the run's counts when they exist."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ebr.ingestion.results import IngestResult


class IngestError(Exception):
    """A failed ingestion, with a one-line message; `result` holds the run's counts when they exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.result: IngestResult | None = None


class MalformedInputError(IngestError):
    """The input is not a valid set of log tables (a file that is not a table, empty, wrong columns...)."""


class BadShareError(IngestError):
    """Too many rows failed their contract: the share of quarantined rows passed `max_bad_fraction`."""


class IngestConfigError(IngestError):
    """A setting of conf/ingest is out of range."""


class DatabaseUnavailableError(IngestError):
    """The DuckDB file cannot be opened (locked by another process, unreadable, not a DuckDB file)."""


def first_line(error: Exception) -> str:
    """The first line of an exception's message (DuckDB's span several lines)."""
    return str(error).strip().splitlines()[0]
