"""What an ingestion run gives back: per-table counts and the run's record (`ingest_runs`, `--json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ebr.ingestion.errors import IngestError
from ebr.schema import SCHEMA_VERSION


@dataclass
class TableCounts:
    read: int = 0  # rows in the input files
    loaded: int = 0  # rows inserted
    quarantined: int = 0  # rows that failed an expectation (one quarantine record per failed expectation)
    skipped_existing: int = 0  # rows identical to a loaded row, or to an earlier row of this input

    def check(self, table: str) -> None:
        """IngestError unless every row read is loaded, quarantined or skipped, once."""
        if self.read != self.loaded + self.quarantined + self.skipped_existing:
            raise IngestError(
                f"{table}: {self.read} rows read but {self.loaded} loaded + {self.quarantined} quarantined + "
                f"{self.skipped_existing} skipped: rows unaccounted for, nothing loaded"
            )


@dataclass(frozen=True)
class KeyConflicts:
    """Rows of a table whose key is already loaded with different content (the contract's `key_conflict`)."""

    rows: int
    example: str  # one such key, e.g. `user_id=17`


@dataclass
class IngestResult:
    run_id: str
    logs_dir: str
    db_path: str
    started_at: datetime
    status: str = "running"  # running | succeeded | failed
    finished_at: datetime | None = None
    schema_version: int = SCHEMA_VERSION
    document_columns: dict[str, str] = field(default_factory=dict)  # extra document columns kept, by kind
    files: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, TableCounts] = field(default_factory=dict)
    key_conflicts: dict[str, KeyConflicts] = field(default_factory=dict)  # tables with conflicts only
    contracts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None
    data_docs: str | None = None  # the Great Expectations Data Docs index.html, once published
    validations: list[Any] = field(default_factory=list, repr=False)  # ebr.contracts.docs.Validation

    def counts_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "document_columns": self.document_columns,
            "files": self.files,
            "tables": {t: asdict(c) for t, c in self.tables.items()},
        }

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary (the last line of `ebr ingest --json`)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "logs_dir": self.logs_dir,
            "db_path": self.db_path,
            "schema_version": self.schema_version,
            "document_columns": self.document_columns,
            "tables": {t: asdict(c) for t, c in self.tables.items()},
            "key_conflicts": {t: asdict(c) for t, c in self.key_conflicts.items()},
            "failed_expectations": {
                t: [o["expectation"] for o in outcomes if not o["success"]]
                for t, outcomes in self.contracts.items()
            },
            "data_docs": self.data_docs,
        }
