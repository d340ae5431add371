"""The ingestion's settings: the `ingest` config group (conf/ingest/default.yaml, schema
ebr.config.IngestSchema) as IngestConfig, checked; a bad setting is an IngestConfigError naming its key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ebr.contracts import load_contract
from ebr.ingestion.errors import IngestConfigError
from ebr.ingestion.stage import STAGING_COLUMNS
from ebr.retrieval.terms import term_value
from ebr.schema import DOCUMENT_COLUMN_TYPES, DOCUMENTS, LOG_TABLES, SCHEMA_VERSION, VERTICALS, Column, Table

# What an extra document column may be called.
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class IngestConfig:
    """The `ingest` config node, checked. Every key is required: the values live in conf/ingest/default.yaml
    only."""

    max_bad_fraction: float
    validation_batch_rows: int
    text_max_chars: dict[str, int | None]  # None: no maximum
    sample_failures: int
    verticals: tuple[str, ...] | None  # None: any vertical
    document_columns: dict[str, str]  # extra document column -> its kind
    outside_links: bool  # read links whose target is outside the logs folder

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | DictConfig) -> IngestConfig:
        """From the composed `cfg.ingest` (or the same keys as plain data); raises IngestConfigError."""
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        config = cls(
            max_bad_fraction=float(raw["max_bad_fraction"]),
            validation_batch_rows=int(raw["validation_batch_rows"]),
            text_max_chars={k: None if v is None else int(v) for k, v in raw["text_max_chars"].items()},
            sample_failures=int(raw["sample_failures"]),
            verticals=_verticals(raw["verticals"]),
            document_columns=_document_columns(raw["documents"]["columns"]),
            outside_links=raw["outside_links"],
        )
        if not isinstance(config.outside_links, bool):
            raise IngestConfigError(
                f"ingest.outside_links must be true or false, got {config.outside_links!r}"
            )
        if not 0.0 <= config.max_bad_fraction <= 1.0:
            raise IngestConfigError(
                f"ingest.max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}"
            )
        if config.validation_batch_rows < 1:
            raise IngestConfigError(
                f"ingest.validation_batch_rows must be >= 1, got {config.validation_batch_rows}"
            )
        for name, n in config.text_max_chars.items():
            if n is not None and n < 1:
                raise IngestConfigError(f"ingest.text_max_chars.{name} must be null or >= 1, got {n}")
        return config

    def suite_params(self, schema_version: int = SCHEMA_VERSION) -> dict[str, Any]:
        """The values of the suites' `$PARAMETER`s for a folder of `schema_version`: a version-1 folder keeps
        its own verticals (VERTICALS), whatever `verticals` says."""
        verticals = VERTICALS if schema_version == 1 else self.verticals
        return {f"{name}_max_chars": n for name, n in self.text_max_chars.items()} | {
            "verticals": None if verticals is None else list(verticals)
        }

    def log_tables(self) -> tuple[Table, ...]:
        """The log tables as this run reads and loads them: documents with the declared extra columns."""
        extra = tuple(
            Column(name, DOCUMENT_COLUMN_TYPES[kind], nullable=True)
            for name, kind in self.document_columns.items()
        )
        return tuple(t.with_columns(extra) if t is DOCUMENTS else t for t in LOG_TABLES)


def _verticals(value: Any) -> tuple[str, ...] | None:
    """`ingest.verticals`: null (any vertical) or a non-empty list of vertical names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise IngestConfigError(f"ingest.verticals must be null or a non-empty list of names, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not term_value(name):
            raise IngestConfigError(
                f"ingest.verticals: {name!r} is not a vertical name (its term vertical:<name> is empty)"
            )
    return tuple(value)


def _document_columns(value: Any) -> dict[str, str]:
    """`ingest.documents.columns`: extra document column -> text | categorical | numeric."""
    if not isinstance(value, Mapping):
        raise IngestConfigError(f"ingest.documents.columns must map names to kinds, got {value!r}")
    internal = {*STAGING_COLUMNS, *(e.column for e in load_contract(DOCUMENTS.name).checks)}
    for name, kind in value.items():
        key = f"ingest.documents.columns.{name}"
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise IngestConfigError(f"{key}: not a plain identifier (a-z, 0-9 and _, starting with a letter)")
        if name in DOCUMENTS.column_names:
            raise IngestConfigError(f"{key}: {name} is a core column of documents")
        if name in internal:
            raise IngestConfigError(f"{key}: {name} is a column name the ingestion uses itself")
        if not isinstance(kind, str) or kind not in DOCUMENT_COLUMN_TYPES:
            raise IngestConfigError(
                f"{key}: unknown type {kind!r} (expected {', '.join(DOCUMENT_COLUMN_TYPES)})"
            )
    return dict(value)
