"""The catalogue of published versions in the home's DuckDB: which versions exist, which run published each,
what was served when, and the repairs an interrupted publication needs.

Tables: `published_versions(version, created_at, status, run_id, gate_passed, gate_json, metrics_json,
manifest_path)` and `serving_events(ts, action, version, previous)` (action: publish, rollback, adopt).
Every change runs under an exclusive lock on versions/.lock (`locked`), released by the OS if the process
dies.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import duckdb

from ebr import home, registry

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"^v\d{4,}$")
STAGING_PREFIX = ".staging-"

REGISTRY_DDL = """
CREATE TABLE IF NOT EXISTS published_versions (
    version VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    status VARCHAR,
    run_id VARCHAR,
    gate_passed BOOLEAN,
    gate_json VARCHAR,
    metrics_json VARCHAR,
    manifest_path VARCHAR
);
CREATE TABLE IF NOT EXISTS serving_events (
    ts TIMESTAMP,
    action VARCHAR,
    version VARCHAR,
    previous VARCHAR
);
"""


class UnknownVersionError(LookupError):
    """No published version of that name."""


@contextmanager
def locked() -> Iterator[None]:
    """An exclusive lock on versions/ (released by the OS if the process dies)."""
    home.versions_dir().mkdir(parents=True, exist_ok=True)
    with open(home.versions_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(home.db_path()))
    con.execute(REGISTRY_DDL)
    return con


def registered(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT version FROM published_versions").fetchall()}


def version_of_run(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The version a run published (publication is idempotent per run id), or None."""
    row = con.execute(
        "SELECT version FROM published_versions WHERE run_id = ? ORDER BY version LIMIT 1", [run_id]
    ).fetchone()
    if row:
        return row[0]
    served = registry.served_version()  # published, but the crash came before its registry row
    if served is not None and read_manifest(served).get("run_id") == run_id:
        return served
    return None


def utc(value: str | None = None) -> datetime:
    """A naive UTC timestamp (DuckDB TIMESTAMP) from an ISO string, or now."""
    moment = datetime.fromisoformat(value) if value else datetime.now(UTC)
    return moment.astimezone(UTC).replace(tzinfo=None)


def record(
    con: duckdb.DuckDBPyConnection, manifest: Mapping[str, Any], action: str, previous: str | None
) -> None:
    """Register a version from its manifest and the serving event, in one transaction."""
    version = manifest["version"]
    gate = manifest.get("gate") or {}
    con.execute("BEGIN")
    con.execute(
        "INSERT INTO published_versions VALUES (?, ?, 'published', ?, ?, ?, ?, ?)",
        [
            version,
            utc(manifest["created_at"]),
            manifest.get("run_id"),
            bool(gate.get("passed")),
            json.dumps(gate),
            json.dumps(manifest.get("metrics") or {}),
            str(home.versions_dir() / version / registry.MANIFEST),
        ],
    )
    con.execute("INSERT INTO serving_events VALUES (?, ?, ?, ?)", [utc(), action, version, previous])
    con.execute("COMMIT")


def read_manifest(version: str) -> dict[str, Any]:
    return json.loads((home.versions_dir() / version / registry.MANIFEST).read_text())


def reconcile(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Repair what an interrupted publication left (call under the lock); returns what was done."""
    versions = home.versions_dir()
    done: dict[str, list[str]] = {"removed_staging": [], "removed_unpromoted": [], "adopted": []}
    for path in sorted(versions.glob(f"{STAGING_PREFIX}*")):
        shutil.rmtree(path)
        done["removed_staging"].append(path.name)
    known, served = registered(con), registry.served_version()
    for path in sorted(p for p in versions.iterdir() if p.is_dir() and VERSION_NAME.match(p.name)):
        if path.name in known:
            continue
        if path.name == served:
            record(con, read_manifest(served), "adopt", None)
            done["adopted"].append(served)
        else:
            shutil.rmtree(path)
            done["removed_unpromoted"].append(path.name)
    if any(done.values()):
        log.warning("repaired an interrupted publication in %s: %s", versions, done)
    return done


def next_version(con: duckdb.DuckDBPyConnection) -> str:
    names = registered(con) | {p.name for p in home.versions_dir().iterdir() if VERSION_NAME.match(p.name)}
    return f"v{max((int(n[1:]) for n in names), default=0) + 1:04d}"


def rollback(version: str) -> str | None:
    """Serve an earlier published version after verifying it; returns the version served before."""
    with locked(), connect() as con:
        reconcile(con)
        if version not in registered(con):
            known = ", ".join(sorted(registered(con))) or "none"
            raise UnknownVersionError(f"unknown version {version!r} (published versions: {known})")
        registry.verify_version(home.versions_dir() / version)
        previous = registry.served_version()
        registry.set_served_version(version)
        con.execute("INSERT INTO serving_events VALUES (?, 'rollback', ?, ?)", [utc(), version, previous])
    return previous


def _entry(
    version: str,
    created_at: Any,
    status: str,
    run_id: str | None,
    gate: Mapping[str, Any],
    manifest_path: str,
    served: str | None,
) -> dict[str, Any]:
    checks = gate.get("checks") or []
    floors = {c["vertical"]: c for c in checks if c.get("rule") in ("floor", "sessions")}
    published = {c["vertical"]: c for c in checks if c.get("rule") == "published"}
    return {
        "version": version,
        "created_at": str(created_at),
        "status": status,
        "served": version == served,
        "run_id": run_id,
        "gate_passed": gate.get("passed"),
        "gate_reason": gate.get("reason"),
        "gate_metrics": {
            v: {
                "metric": c["metric"],
                "value": c["value"],
                "floor": c["threshold"],
                "published": published[v]["baseline"] if v in published else None,
            }
            for v, c in floors.items()
        },
        "manifest_path": manifest_path,
    }


def list_versions(verify: bool = False) -> list[dict[str, Any]]:
    """Published versions, oldest first, with gate metrics and which one is served (staging and unpromoted
    folders are not versions). With verify=True each entry gets `verified` (and `error` when corrupt)."""
    served = registry.served_version()
    rows = []
    if home.db_path().is_file():
        with duckdb.connect(str(home.db_path()), read_only=True) as con:
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            }
            if "published_versions" in tables:
                rows = con.execute(
                    "SELECT version, created_at, status, run_id, gate_json, manifest_path "
                    "FROM published_versions"
                ).fetchall()
    entries = {r[0]: _entry(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5], served) for r in rows}
    if served is not None and served not in entries:  # a crash between serving and recording it
        manifest = read_manifest(served)
        entries[served] = _entry(
            served,
            manifest["created_at"],
            "published (not yet recorded)",
            manifest.get("run_id"),
            manifest.get("gate") or {},
            str(home.versions_dir() / served / registry.MANIFEST),
            served,
        )
    out = [entries[v] for v in sorted(entries)]
    if verify:
        for entry in out:
            try:
                registry.verify_version(home.versions_dir() / entry["version"])
                entry["verified"] = True
            except registry.CorruptVersionError as exc:
                entry["verified"], entry["error"] = False, str(exc)
    return out
