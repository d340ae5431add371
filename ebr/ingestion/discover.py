"""Finding the log tables of a folder: their files and formats, and the folder's schema_version."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ebr.ingestion.errors import MalformedInputError
from ebr.schema import LOG_TABLES, SCHEMA_VERSION, SCHEMA_VERSIONS, Table

# Table file suffixes and the DuckDB reader of each (compressed CSV/JSONL are read transparently).
FORMATS = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".jsonl": "json", ".jsonl.gz": "json"}


@dataclass(frozen=True)
class TableSource:
    """A log table and the files that hold it (one, or the part files of its folder)."""

    table: Table
    files: tuple[Path, ...]


def file_format(path: Path) -> str | None:
    """The DuckDB reader of a table file (FORMATS), None for another suffix."""
    return next((fmt for suffix, fmt in FORMATS.items() if path.name.endswith(suffix)), None)


def expected_files(name: str) -> str:
    """The files that may hold table `name`, for error messages."""
    return f"{name}.parquet, {name}.csv, {name}.jsonl or a folder {name}/ of such files"


def read_schema_version(logs_dir: Path, outside_links: bool = False) -> int:
    """The folder's schema_version (schema.json, as the simulator writes it): one of SCHEMA_VERSIONS; absent
    means the current one. A link is followed as by `find_sources`."""
    path = logs_dir / "schema.json"
    if path.is_symlink():
        check_link(path, logs_dir, outside_links)
    if not path.exists():
        return SCHEMA_VERSION
    try:
        version = json.loads(path.read_text()).get("schema_version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise MalformedInputError(f"{path}: not a JSON object with a schema_version") from None
    if type(version) is not int or version not in SCHEMA_VERSIONS:
        raise MalformedInputError(
            f"{path}: schema_version {version!r:.80} is not supported "
            f"(this platform reads {', '.join(map(str, SCHEMA_VERSIONS))})"
        )
    return version


def _is_entry(path: Path) -> bool:
    """A file, or a link (a dangling one is reported, not taken for a missing table)."""
    return path.is_file() or path.is_symlink()


def check_link(path: Path, logs_dir: Path, outside_links: bool) -> None:
    """MalformedInputError if `path` is a dangling link or, unless `outside_links`, a link (or in a linked
    folder) whose target is outside `logs_dir`."""
    target = path.resolve()
    if not target.exists():
        raise MalformedInputError(f"{path}: a dangling link (its target {target} does not exist)")
    if not outside_links and not target.is_relative_to(logs_dir.resolve()):
        raise MalformedInputError(
            f"{path}: a link to {target}, outside the logs folder: refused (ingest.outside_links reads it)"
        )


def find_sources(
    logs_dir: Path, tables: Sequence[Table] = LOG_TABLES, outside_links: bool = False
) -> list[TableSource]:
    """Those of `tables` present in `logs_dir`, in their order (dependency order); other files
    (ground_truth/, reports) are ignored. A link is followed within `logs_dir` only, unless `outside_links`
    (check_link); links to folders inside a table's folder are not followed."""
    if not logs_dir.is_dir():
        raise MalformedInputError(f"{logs_dir}: not a folder")
    sources = []
    for table in tables:
        name = table.name
        candidates = [p for p in sorted(logs_dir.glob(f"{name}.*")) if _is_entry(p)]
        unknown = [p for p in candidates if p.name not in {name + suffix for suffix in FORMATS}]
        if unknown:
            raise MalformedInputError(f"{unknown[0]}: not a table file (expected {expected_files(name)})")
        folder = logs_dir / name
        given = candidates + ([folder] if folder.is_dir() or folder.is_symlink() else [])
        if len(given) > 1:
            raise MalformedInputError(
                f"{logs_dir}: {name} is given more than once ({', '.join(p.name for p in given)})"
            )
        if not given:
            continue
        check_link(given[0], logs_dir, outside_links)
        if given[0].is_dir():
            parts = sorted(p for p in folder.rglob("*") if _is_entry(p) and not p.name.startswith((".", "_")))
            parts = [p for p in parts if not p.is_dir()]  # links to folders are not followed
            unknown = [p for p in parts if not file_format(p)]
            if unknown:
                raise MalformedInputError(
                    f"{unknown[0]}: not a table file (expected .parquet, .csv or .jsonl)"
                )
            if not parts:
                raise MalformedInputError(f"{folder}: no table files in the folder")
            for part in parts:
                check_link(part, logs_dir, outside_links)
            sources.append(TableSource(table, tuple(parts)))
        else:
            sources.append(TableSource(table, (given[0],)))
    return sources
