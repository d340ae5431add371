"""Publish a gated candidate as an immutable version, atomically; list versions; roll back.

Publication, under an exclusive lock on versions/.lock:
  1. reconcile: delete staging folders and unpromoted versions left by a crash, register a served version
     whose registry row a crash lost;
  2. stage: write every file into versions/.staging-<version>-<pid>/ (hidden from listing and serving),
     then the manifest with the sha256 of every file, then fsync every file and folder;
  3. rename the staging folder to versions/<version>/ (atomic on one file system) and verify it;
  4. flip serving.json to the new version (atomic replace): the commit point;
  5. record the version and the serving event in the DuckDB registry.
A kill before 4 leaves the previous version served and the new one invisible (and removed by the next
publication); a kill after 4 leaves the new one served, listed from its manifest until step 1 of the next
publication or rollback records it. `STEP_HOOK` is called after each step (tests kill the process there).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import pandas as pd

from ebr import home, registry
from ebr.retrieval.retrievers import RetrieverSpec, index_docs
from ebr.schema import LOG_TABLES
from ebr.steps.gate import GateFailedError, GateResult

log = logging.getLogger(__name__)

VERSION_NAME = re.compile(r"^v\d{4,}$")
STAGING_PREFIX = ".staging-"
STEPS = ("staged", "files_written", "manifest_written", "synced", "renamed", "served", "recorded")
STEP_HOOK: Callable[[str], None] | None = None

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


@dataclass
class VersionPieces:
    """Everything serving needs, prepared by the retrain flow."""

    doc_ids: np.ndarray  # int64, the row order of every embedding matrix
    documents: pd.DataFrame  # doc_id, vertical, title, terms (namespaced terms for the engine)
    embeddings: Mapping[str, np.ndarray]  # per model key (an ensemble's concatenation is added if absent)
    indexes: Mapping[str, faiss.Index]  # trained quantised index per key (at least the retriever's index_key)
    towers: Mapping[str, Path]  # exported query tower folders (ebr.models.export) per model key
    retriever: RetrieverSpec  # what is served
    build_engine: Callable[[Path], None] | None = None  # writes the engine's term index into the folder given
    index_points: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # tuned point per index key


@dataclass(frozen=True)
class PublishedVersion:
    version: str
    path: Path
    manifest: dict[str, Any]


def _step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


@contextmanager
def _locked() -> Iterator[None]:
    """An exclusive lock on versions/ (released by the OS if the process dies)."""
    home.versions_dir().mkdir(parents=True, exist_ok=True)
    with open(home.versions_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(home.db_path()))
    con.execute(REGISTRY_DDL)
    return con


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every folder bottom-up, so the data is on disk before the rename."""
    for dirpath, _, filenames in sorted(os.walk(root), key=lambda w: -len(w[0])):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def code_version() -> dict[str, Any]:
    """The git commit of the project (with a dirty flag) and the installed package version."""
    out: dict[str, Any] = {}
    try:
        out["package"] = metadata.version("ebr-platform")
    except metadata.PackageNotFoundError:
        out["package"] = None
    try:
        run = {"cwd": home.PROJECT_ROOT, "capture_output": True, "text": True, "timeout": 10, "check": True}
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        out["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], **run).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        out["git_commit"], out["git_dirty"] = None, None
    return out


def data_version(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Row counts of the log tables and the ingestion run ids in the home's DuckDB, with a digest of both."""
    present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    tables = {
        t.name: con.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
        for t in LOG_TABLES
        if t.name in present
    }
    runs = []
    if "ingest_runs" in present:
        runs = [r[0] for r in con.execute("SELECT run_id FROM ingest_runs ORDER BY run_id").fetchall()]
    payload = json.dumps({"tables": tables, "ingest_runs": runs}, sort_keys=True)
    return {
        "tables": tables,
        "ingest_runs": runs,
        "digest": hashlib.blake2b(payload.encode(), digest_size=16).hexdigest(),
    }


def _registered(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT version FROM published_versions").fetchall()}


def _utc(value: str | None = None) -> datetime:
    """A naive UTC timestamp (DuckDB TIMESTAMP) from an ISO string, or now."""
    moment = datetime.fromisoformat(value) if value else datetime.now(UTC)
    return moment.astimezone(UTC).replace(tzinfo=None)


def _record(
    con: duckdb.DuckDBPyConnection, manifest: Mapping[str, Any], action: str, previous: str | None
) -> None:
    version = manifest["version"]
    gate = manifest.get("gate") or {}
    con.execute("BEGIN")
    con.execute(
        "INSERT INTO published_versions VALUES (?, ?, 'published', ?, ?, ?, ?, ?)",
        [
            version,
            _utc(manifest["created_at"]),
            manifest.get("run_id"),
            bool(gate.get("passed")),
            json.dumps(gate),
            json.dumps(manifest.get("metrics") or {}),
            str(home.versions_dir() / version / registry.MANIFEST),
        ],
    )
    con.execute("INSERT INTO serving_events VALUES (?, ?, ?, ?)", [_utc(), action, version, previous])
    con.execute("COMMIT")


def _read_manifest(version: str) -> dict[str, Any]:
    return json.loads((home.versions_dir() / version / registry.MANIFEST).read_text())


def reconcile(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Repair what an interrupted publication left (call under the lock); returns what was done."""
    versions = home.versions_dir()
    done: dict[str, list[str]] = {"removed_staging": [], "removed_unpromoted": [], "adopted": []}
    for path in sorted(versions.glob(f"{STAGING_PREFIX}*")):
        shutil.rmtree(path)
        done["removed_staging"].append(path.name)
    registered, served = _registered(con), registry.served_version()
    for path in sorted(p for p in versions.iterdir() if p.is_dir() and VERSION_NAME.match(p.name)):
        if path.name in registered:
            continue
        if path.name == served:
            _record(con, _read_manifest(served), "adopt", None)
            done["adopted"].append(served)
        else:
            shutil.rmtree(path)
            done["removed_unpromoted"].append(path.name)
    if any(done.values()):
        log.warning("repaired an interrupted publication in %s: %s", versions, done)
    return done


def _next_version(con: duckdb.DuckDBPyConnection) -> str:
    names = _registered(con) | {p.name for p in home.versions_dir().iterdir() if VERSION_NAME.match(p.name)}
    return f"v{max((int(n[1:]) for n in names), default=0) + 1:04d}"


def _write_pieces(staging: Path, pieces: VersionPieces) -> dict[str, list[str]]:
    spec = pieces.retriever
    embeddings = dict(pieces.embeddings)
    if spec.kind == "ensemble" and spec.name not in embeddings:
        embeddings[spec.name] = index_docs(spec, embeddings)
    doc_ids = np.asarray(pieces.doc_ids, dtype=np.int64)
    _check_pieces(pieces, embeddings, doc_ids)
    np.save(staging / "doc_ids.npy", doc_ids)
    _step("wrote:doc_ids.npy")
    pieces.documents.to_parquet(staging / "documents.parquet", index=False)
    _step("wrote:documents.parquet")
    (staging / "embeddings").mkdir()
    for key, matrix in sorted(embeddings.items()):
        np.save(staging / "embeddings" / f"{key}.npy", np.asarray(matrix, dtype=np.float32))
        _step(f"wrote:embeddings/{key}.npy")
    (staging / "faiss").mkdir()
    for key, index in sorted(pieces.indexes.items()):
        faiss.write_index(index, str(staging / "faiss" / f"{key}.faiss"))
        _step(f"wrote:faiss/{key}.faiss")
    (staging / "towers").mkdir()
    for key, folder in sorted(pieces.towers.items()):
        shutil.copytree(folder, staging / "towers" / key)
        _step(f"wrote:towers/{key}")
    if pieces.build_engine is not None:
        (staging / "engine").mkdir()
        pieces.build_engine(staging / "engine")
        _step("wrote:engine")
    return {
        "embeddings": sorted(embeddings),
        "faiss": sorted(pieces.indexes),
        "towers": sorted(pieces.towers),
    }


def _check_pieces(pieces: VersionPieces, embeddings: Mapping[str, np.ndarray], doc_ids: np.ndarray) -> None:
    spec = pieces.retriever
    if doc_ids.ndim != 1 or len(np.unique(doc_ids)) != len(doc_ids):
        raise ValueError("publish: doc_ids must be a 1-d array of unique ids")
    for key, matrix in embeddings.items():
        if len(matrix) != len(doc_ids):
            raise ValueError(
                f"publish: embeddings[{key!r}] has {len(matrix)} rows for {len(doc_ids)} doc_ids"
            )
    if len(pieces.documents) != len(doc_ids):
        raise ValueError(f"publish: documents has {len(pieces.documents)} rows for {len(doc_ids)} doc_ids")
    needed = {
        "embeddings": set(spec.keys) | {spec.index_key},
        "indexes": {spec.index_key},
        "towers": set(spec.keys),
    }
    have = {"embeddings": set(embeddings), "indexes": set(pieces.indexes), "towers": set(pieces.towers)}
    for what, keys in needed.items():
        if keys - have[what]:
            raise ValueError(f"publish: retriever {spec.name!r} needs {what} for {sorted(keys - have[what])}")
    for key, index in pieces.indexes.items():
        if index.ntotal != len(doc_ids):
            raise ValueError(
                f"publish: index {key!r} holds {index.ntotal} vectors for {len(doc_ids)} doc_ids"
            )


def _index_summary(index: faiss.Index) -> dict[str, Any]:
    summary = {
        "class": type(faiss.downcast_index(index)).__name__,
        "d": index.d,
        "ntotal": index.ntotal,
        "metric": "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
    }
    try:
        ivf = faiss.extract_index_ivf(index)
        summary |= {"nlist": ivf.nlist, "nprobe": ivf.nprobe, "code_size": ivf.code_size}
    except RuntimeError:
        pass
    return summary


def publish_version(
    pieces: VersionPieces,
    gate: GateResult,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    run_id: str,
    data: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> PublishedVersion:
    """Write, verify and serve a new version (atomically, see the module docstring); refuses a failed gate.

    `config` is the resolved config (plain dict), `data` the data version (default: `data_version`), `version`
    the name (default: the next vNNNN).
    """
    if not gate.passed:
        raise GateFailedError(f"refusing to publish: {gate.reason}")
    with _locked(), _connect() as con:
        reconcile(con)
        version = version or _next_version(con)
        final = home.versions_dir() / version
        if not VERSION_NAME.match(version) or final.exists() or version in _registered(con):
            raise ValueError(f"publish: version name {version!r} is invalid or already used")
        staging = home.versions_dir() / f"{STAGING_PREFIX}{version}-{os.getpid()}"
        staging.mkdir()
        try:
            manifest = _stage(
                staging,
                pieces,
                version,
                gate,
                metrics,
                config,
                run_id,
                dict(data) if data is not None else data_version(con),
            )
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, final)
        _fsync_dir(home.versions_dir())
        _step("renamed")
        registry.verify_version(final)
        previous = registry.served_version()
        registry.set_served_version(version)
        _step("served")
        _record(con, manifest, "publish", previous)
        _step("recorded")
    return PublishedVersion(version, final, manifest)


def _stage(
    staging: Path,
    pieces: VersionPieces,
    version: str,
    gate: GateResult,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    run_id: str,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the files and the manifest into the staging folder and fsync it all; return the manifest."""
    _step("staged")
    contents = _write_pieces(staging, pieces)
    _step("files_written")
    registry.write_manifest(
        staging,
        {
            "format": 1,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "run_id": run_id,
            "retriever": {"spec": pieces.retriever.to_dict(), "index_key": pieces.retriever.index_key},
            "indexes": {
                k: _index_summary(ix) | dict(pieces.index_points.get(k, {}))
                for k, ix in pieces.indexes.items()
            },
            "contents": contents,
            "n_docs": len(pieces.doc_ids),
            "metrics": dict(metrics),
            "gate": gate.to_dict(),
            "config": dict(config),
            "data_version": data,
            "code_version": code_version(),
        },
    )
    _step("manifest_written")
    _fsync_tree(staging)
    _step("synced")
    return json.loads((staging / registry.MANIFEST).read_text())  # as stored (numpy values made JSON)


def rollback(version: str) -> str | None:
    """Serve an earlier published version after verifying it; returns the version served before."""
    with _locked(), _connect() as con:
        reconcile(con)
        if version not in _registered(con):
            known = ", ".join(sorted(_registered(con))) or "none"
            raise UnknownVersionError(f"unknown version {version!r} (published versions: {known})")
        registry.verify_version(home.versions_dir() / version)
        previous = registry.served_version()
        registry.set_served_version(version)
        con.execute("INSERT INTO serving_events VALUES (?, 'rollback', ?, ?)", [_utc(), version, previous])
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
    return {
        "version": version,
        "created_at": str(created_at),
        "status": status,
        "served": version == served,
        "run_id": run_id,
        "gate_passed": gate.get("passed"),
        "gate_reason": gate.get("reason"),
        "gate_metrics": {
            c["vertical"]: {
                "metric": c["metric"],
                "value": c["candidate"],
                "floor": c["floor"],
                "published": c["published"],
            }
            for c in checks
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
        manifest = _read_manifest(served)
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
