"""The catalogue of published versions in a dataset's DuckDB: which versions exist, which run published each,
what was served when, and the repairs an interrupted publication needs.

Tables: `published_versions(version, created_at, status, run_id, gate_passed, gate_json, metrics_json,
manifest_path)` (status: published, or deleted by `ebr gc`) and `serving_events(ts, action, version,
previous)` (action: publish, rollback, adopt). Every change runs under an exclusive lock on versions/.lock
(`locked`), released by the OS if the process dies. Nothing here deletes a folder: version folders the
catalogue does not know are reported and can be adopted (`adopt`); only `ebr gc` deletes (ebr/registry/gc.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
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


class AdoptionError(ValueError):
    """A folder that cannot be registered as a version (the message names it and why)."""


@contextmanager
def locked(dataset: str) -> Iterator[None]:
    """An exclusive lock on the dataset's versions/ (released by the OS if the process dies)."""
    home.versions_dir(dataset).mkdir(parents=True, exist_ok=True)
    with open(home.versions_dir(dataset) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(dataset: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(home.db_path(dataset)))
    con.execute(REGISTRY_DDL)
    return con


def registered(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every name the catalogue ever gave, deleted versions included (a name is never reused)."""
    return {r[0] for r in con.execute("SELECT version FROM published_versions").fetchall()}


def published(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The registered versions `ebr gc` has not deleted."""
    rows = con.execute("SELECT version FROM published_versions WHERE status <> 'deleted'").fetchall()
    return {r[0] for r in rows}


def version_folders(dataset: str) -> list[str]:
    """The names of the dataset's version folders (staging folders excluded), sorted."""
    folder = home.versions_dir(dataset)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and VERSION_NAME.match(p.name))


def version_of_run(con: duckdb.DuckDBPyConnection, dataset: str, run_id: str) -> str | None:
    """The version a run published (publication is idempotent per run id), or None."""
    row = con.execute(
        "SELECT version FROM published_versions WHERE run_id = ? ORDER BY version LIMIT 1", [run_id]
    ).fetchone()
    if row:
        return row[0]
    served = registry.served_version(dataset)  # published, but the crash came before its registry row
    if served is not None and read_manifest(dataset, served).get("run_id") == run_id:
        return served
    return None


def utc(value: str | None = None) -> datetime:
    """A naive UTC timestamp (DuckDB TIMESTAMP) from an ISO string, or now."""
    moment = datetime.fromisoformat(value) if value else datetime.now(UTC)
    return moment.astimezone(UTC).replace(tzinfo=None)


def record(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    manifest: Mapping[str, Any],
    action: str | None,
    previous: str | None,
) -> None:
    """Register a version from its manifest and the serving event (none when `action` is None), in one
    transaction."""
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
            str(home.versions_dir(dataset) / version / registry.MANIFEST),
        ],
    )
    if action is not None:
        con.execute("INSERT INTO serving_events VALUES (?, ?, ?, ?)", [utc(), action, version, previous])
    con.execute("COMMIT")


def read_manifest(dataset: str, version: str) -> dict[str, Any]:
    return json.loads((home.versions_dir(dataset) / version / registry.MANIFEST).read_text())


def reconcile(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, list[str]]:
    """Register a served version whose catalogue row a crash lost, and report what the catalogue and
    versions/ disagree on (call under the lock); deletes nothing. Returns `adopted` (the served version, now
    registered), `unknown` (version folders not registered: `adopt` or `ebr gc`), `missing` (registered
    versions whose folder is gone) and `staging` (leftovers of interrupted publications: `ebr gc`)."""
    folders, served = version_folders(dataset), registry.served_version(dataset)
    done: dict[str, list[str]] = {"adopted": [], "unknown": [], "missing": [], "staging": []}
    if served is not None and served in folders and served not in registered(con):
        record(con, dataset, read_manifest(dataset, served), "adopt", None)
        done["adopted"].append(served)
    known = registered(con)
    done["unknown"] = [name for name in folders if name not in known]
    done["missing"] = sorted(published(con) - set(folders))
    done["staging"] = sorted(p.name for p in home.versions_dir(dataset).glob(f"{STAGING_PREFIX}*"))
    if done["adopted"]:
        log.warning("registered the served version %s (its catalogue row was lost)", served)
    if done["unknown"]:
        log.warning(
            "version folders not in the registry (kept; register with `ebr versions --adopt V`): %s",
            ", ".join(done["unknown"]),
        )
    if done["missing"]:
        log.warning("registered versions whose folder is gone: %s", ", ".join(done["missing"]))
    return done


def adopt(dataset: str, version: str) -> dict[str, Any]:
    """Register the dataset's versions/<version>/ after verifying it (serving unchanged); returns its
    manifest."""
    folder = home.versions_dir(dataset) / version
    with locked(dataset), connect(dataset) as con:
        if version in registered(con):
            raise AdoptionError(f"{folder}: {version} is already registered")
        if not VERSION_NAME.match(version) or not folder.is_dir():
            raise AdoptionError(f"{folder}: no such version folder")
        try:
            manifest = registry.verify_version(folder)
        except registry.CorruptVersionError as exc:
            raise AdoptionError(f"cannot adopt {version}: {exc}") from None
        if manifest.get("version") != version:
            raise AdoptionError(f"{folder}: its manifest names version {manifest.get('version')!r}")
        record(con, dataset, manifest, None, None)
    log.warning("adopted version folder %s into the registry", folder)
    return manifest


def next_version(con: duckdb.DuckDBPyConnection, dataset: str) -> str:
    names = registered(con) | set(version_folders(dataset))
    return f"v{max((int(n[1:]) for n in names), default=0) + 1:04d}"


def rollback(dataset: str, version: str) -> str | None:
    """Serve an earlier published version of `dataset` after verifying it; returns the version served
    before."""
    with locked(dataset), connect(dataset) as con:
        found = reconcile(con, dataset)
        if version not in published(con):
            known = ", ".join(sorted(published(con))) or "none"
            hint = (
                "; its folder is not registered: `ebr versions --adopt` it"
                if version in found["unknown"]
                else ""
            )
            raise UnknownVersionError(f"unknown version {version!r} (published versions: {known}){hint}")
        registry.verify_version(home.versions_dir(dataset) / version)
        previous = registry.served_version(dataset)
        try:
            registry.set_served_version(dataset, version)
        finally:
            if registry.served_version(dataset) == version:  # switched, even if a later fsync failed
                con.execute(
                    "INSERT INTO serving_events VALUES (?, 'rollback', ?, ?)", [utc(), version, previous]
                )
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


def list_versions(dataset: str, verify: bool = False) -> list[dict[str, Any]]:
    """Every version of `dataset`, oldest first, with gate metrics and which one is served; its status is
    `published`, `missing` (registered, folder gone), `unregistered` (a folder the catalogue does not know:
    `adopt` it) or `published (not yet recorded)` (served, its row lost). Staging folders are not versions;
    versions `ebr gc` deleted are not listed. With verify=True each entry gets `verified` (and `error`)."""
    served, folders = registry.served_version(dataset), set(version_folders(dataset))
    rows = []
    if home.db_path(dataset).is_file():
        with duckdb.connect(str(home.db_path(dataset)), read_only=True) as con:
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            }
            if "published_versions" in tables:
                rows = con.execute(
                    "SELECT version, created_at, status, run_id, gate_json, manifest_path "
                    "FROM published_versions"
                ).fetchall()
    entries = {
        r[0]: _entry(
            r[0], r[1], r[2] if r[0] in folders else "missing", r[3], json.loads(r[4] or "{}"), r[5], served
        )
        for r in rows
        if r[2] != "deleted"
    }
    for name in sorted(folders - {r[0] for r in rows}):
        status = "published (not yet recorded)" if name == served else "unregistered"
        path = home.versions_dir(dataset) / name / registry.MANIFEST
        try:
            manifest = read_manifest(dataset, name)
        except (OSError, ValueError):
            manifest = {"created_at": None}
        gate = manifest.get("gate") if isinstance(manifest.get("gate"), dict) else {}
        entries[name] = _entry(
            name, manifest.get("created_at"), status, manifest.get("run_id"), gate, str(path), served
        )
    out = [entries[v] for v in sorted(entries)]
    if verify:
        for entry in out:
            try:
                registry.verify_version(home.versions_dir(dataset) / entry["version"])
                entry["verified"] = True
            except registry.CorruptVersionError as exc:
                entry["verified"], entry["error"] = False, str(exc)
    return out
