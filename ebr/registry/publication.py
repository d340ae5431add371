"""Writing a version and promoting it, atomically: a candidate is staged (written completely, manifest last),
measured as it would be served, and only then promoted into its dataset's versions/ and served.

Staging (`stage_version`) writes every file of a version into a folder of its own (a run's folder, or
versions/.staging-*), builds the engine index from the trained quantisers, writes the manifest with the
sha256 of every file, and fsyncs it all. Promotion (`promote`), under the catalogue's lock:
  1. reconcile: register a served version whose registry row a crash lost and report what a crash left
     (nothing is deleted); a run that already published returns its version (idempotent per run);
  2. copy the staged folder (hard links: no data copied) into versions/.staging-<version>-<pid>-<hex>/,
     rewrite its manifest with the version name and the gate's verdict, fsync;
  3. rename it to versions/<version>/ (atomic on one file system) and verify it;
  4. flip serving.json to the new version (atomic replace): the commit point;
  5. record the version and the serving event in the catalogue.
An error before 4 removes this call's own folder and leaves the previous version served. A kill before 4
leaves the previous version served and the new folder unlisted (a `.staging-*` leftover for `ebr gc`, or after
3 an unregistered version folder, reported and adoptable); a kill after 4 leaves the new one served, listed
from its manifest until step 1 of the next publication or rollback records it. `STEP_HOOK` is called after
each step (tests kill the process there).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping
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
from ebr.io import atomic_write_text, fsync_dir, fsync_tree
from ebr.registry import catalogue
from ebr.schema import LOG_TABLES

FORMAT = 2  # 1: faiss/ beside engine/ and one retriever; 2: the engine's nn fields only, serving per vertical
STEPS = ("staged", "files_written", "manifest_written", "synced", "renamed", "served", "recorded")
STEP_HOOK: Callable[[str], None] | None = None
EngineBuilder = Callable[[Path, Mapping[str, faiss.Index]], None]


class PublicationRefusedError(RuntimeError):
    """A candidate the gate did not pass (the message names the gate's reason)."""


@dataclass
class VersionPieces:
    """Everything serving needs, prepared by the retrain flow."""

    doc_ids: np.ndarray  # int64, the row order of every embedding matrix
    documents: pd.DataFrame  # doc_id, vertical, title, terms, payloads (the engine's terms, frequencies)
    embeddings: Mapping[str, np.ndarray]  # per key: the model keys and the ensembles' concatenations
    indexes: Mapping[str, faiss.Index]  # trained quantised index per key: the engine's (nn KEY) fields
    towers: Mapping[str, Path]  # exported query tower folders (ebr.models.export) per model key
    retrievers: Mapping[str, Mapping[str, Any]]  # name -> retriever spec (ebr.retrieval.retrievers)
    serving: Mapping[str, Any] = field(default_factory=dict)  # per vertical: retriever and expression
    build_engine: EngineBuilder | None = None  # writes the engine folder (engine_dir, trained indexes)
    index_points: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # tuned point per index key
    index_selection: Mapping[str, Any] = field(default_factory=dict)  # predicates and counts per vertical


@dataclass(frozen=True)
class PublishedVersion:
    version: str
    path: Path
    manifest: dict[str, Any]


def _step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


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


def data_version(db_path: Path) -> dict[str, Any]:
    """Row counts of the log tables and the ingestion run ids of a DuckDB file (none when there is no file),
    with a digest of both."""
    tables: dict[str, int] = {}
    runs: list[str] = []
    if Path(db_path).is_file():
        tables, runs = _counts(db_path)
    payload = json.dumps({"tables": tables, "ingest_runs": runs}, sort_keys=True)
    return {
        "tables": tables,
        "ingest_runs": runs,
        "digest": hashlib.blake2b(payload.encode(), digest_size=16).hexdigest(),
    }


def _counts(db_path: Path) -> tuple[dict[str, int], list[str]]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        tables = {
            t.name: con.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
            for t in LOG_TABLES
            if t.name in present
        }
        runs = []
        if "ingest_runs" in present:
            runs = [r[0] for r in con.execute("SELECT run_id FROM ingest_runs ORDER BY run_id").fetchall()]
    return tables, runs


def _check_pieces(pieces: VersionPieces, doc_ids: np.ndarray) -> None:
    if doc_ids.ndim != 1 or len(np.unique(doc_ids)) != len(doc_ids):
        raise ValueError("publish: doc_ids must be a 1-d array of unique ids")
    for key, matrix in pieces.embeddings.items():
        if len(matrix) != len(doc_ids):
            raise ValueError(
                f"publish: embeddings[{key!r}] has {len(matrix)} rows for {len(doc_ids)} doc_ids"
            )
    if len(pieces.documents) != len(doc_ids):
        raise ValueError(f"publish: documents has {len(pieces.documents)} rows for {len(doc_ids)} doc_ids")
    for name, spec in pieces.retrievers.items():
        missing = sorted(set(spec["keys"]) - set(pieces.towers))
        if missing:
            raise ValueError(f"publish: retriever {name!r} needs query towers for {missing}")
    for key, index in pieces.indexes.items():
        if key not in pieces.embeddings:
            raise ValueError(f"publish: index {key!r} has no embeddings")
        if index.ntotal not in (0, len(doc_ids)):
            raise ValueError(
                f"publish: index {key!r} holds {index.ntotal} vectors for {len(doc_ids)} doc_ids"
            )


def _index_summary(index: faiss.Index) -> dict[str, Any]:
    summary = {
        "class": type(faiss.downcast_index(index)).__name__,
        "d": index.d,
        "metric": "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
    }
    try:
        ivf = faiss.extract_index_ivf(index)
        summary |= {"nlist": ivf.nlist, "nprobe": ivf.nprobe, "code_size": ivf.code_size}
    except RuntimeError:
        pass
    return summary


def _write_pieces(staging: Path, pieces: VersionPieces) -> dict[str, list[str]]:
    doc_ids = np.asarray(pieces.doc_ids, dtype=np.int64)
    _check_pieces(pieces, doc_ids)
    np.save(staging / "doc_ids.npy", doc_ids)
    _step("wrote:doc_ids.npy")
    pieces.documents.to_parquet(staging / "documents.parquet", index=False)
    _step("wrote:documents.parquet")
    (staging / "embeddings").mkdir()
    for key, matrix in sorted(pieces.embeddings.items()):
        np.save(staging / "embeddings" / f"{key}.npy", np.asarray(matrix, dtype=np.float32))
        _step(f"wrote:embeddings/{key}.npy")
    (staging / "towers").mkdir()
    for key, folder in sorted(pieces.towers.items()):
        shutil.copytree(folder, staging / "towers" / key)
        _step(f"wrote:towers/{key}")
    if pieces.build_engine is not None:
        (staging / "engine").mkdir()
        pieces.build_engine(staging / "engine", pieces.indexes)
        _step("wrote:engine")
    return {
        "embeddings": sorted(pieces.embeddings),
        "nn": sorted(pieces.indexes),
        "towers": sorted(pieces.towers),
    }


def stage_version(
    pieces: VersionPieces,
    folder: Path,
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    run_id: str,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a complete candidate version into `folder` (new or empty): files, engine, then the manifest
    (no version name and no gate verdict yet), all fsynced; returns the manifest as stored."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder}: not empty; a version is staged into an empty folder")
    _step("staged")
    contents = _write_pieces(folder, pieces)
    _step("files_written")
    registry.write_manifest(
        folder,
        {
            "format": FORMAT,
            "version": None,
            "created_at": datetime.now(UTC).isoformat(),
            "run_id": run_id,
            "retrievers": {name: dict(spec) for name, spec in pieces.retrievers.items()},
            "serving": dict(pieces.serving),
            "indexes": {
                k: _index_summary(ix) | dict(pieces.index_points.get(k, {}))
                for k, ix in pieces.indexes.items()
            },
            "index_selection": dict(pieces.index_selection),  # ebr/selection/documents.py: Selection.summary
            "contents": contents,
            "n_docs": len(pieces.doc_ids),
            "metrics": dict(metrics),
            "gate": None,
            "config": dict(config),
            "data_version": dict(data),
            "code_version": code_version(),
        },
    )
    _step("manifest_written")
    fsync_tree(folder)
    _step("synced")
    return json.loads((folder / registry.MANIFEST).read_text())  # as stored (numpy values made JSON)


def add_stage(folder: Path, name: str, source: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Add a stage (ebr/retrieval/stages.py) to the staged candidate in `folder`: a copy of the folder
    `source` as stages/<name>/ and `summary` as the manifest's `stages.<name>`, with every file's checksum;
    a stage of that name staged before is replaced. Returns the manifest as stored."""
    manifest = json.loads((folder / registry.MANIFEST).read_text())
    if manifest.get("version"):
        raise ValueError(f"{folder}: version {manifest['version']} is published; stages go into a candidate")
    target = folder / "stages" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    manifest["stages"] = dict(manifest.get("stages") or {}) | {name: dict(summary)}
    manifest.pop("files", None)
    registry.write_manifest(folder, manifest)
    fsync_tree(folder)
    return json.loads((folder / registry.MANIFEST).read_text())


def _new_version(con: duckdb.DuckDBPyConnection, dataset: str, version: str | None) -> tuple[str, Path]:
    """The name (the next free one when None) and folder of a version about to be published."""
    version = version or catalogue.next_version(con, dataset)
    final = home.versions_dir(dataset) / version
    if not catalogue.VERSION_NAME.match(version) or final.exists() or version in catalogue.registered(con):
        raise ValueError(f"publish: version name {version!r} is invalid or already used")
    return version, final


def _staging_dir(dataset: str, version: str) -> Path:
    """A fresh staging folder name in versions/ (unique even when a dead process had this pid)."""
    name = f"{catalogue.STAGING_PREFIX}{version}-{os.getpid()}-{secrets.token_hex(3)}"
    return home.versions_dir(dataset) / name


def _link_tree(source: Path, target: Path) -> None:
    """A copy of `source` at `target` whose files are hard links (a full copy where links are refused)."""
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def promote(
    staged: Path, gate: Mapping[str, Any], run_id: str, dataset: str, version: str | None = None
) -> PublishedVersion:
    """Publish the version staged in `staged` into `dataset` with the gate's verdict (`GateResult.to_dict()`)
    and serve it; a run that already published gets its version back, nothing new (see the module
    docstring)."""
    if not gate.get("passed"):
        raise PublicationRefusedError(f"refusing to publish: {gate.get('reason')}")
    with catalogue.locked(dataset), catalogue.connect(dataset) as con:
        catalogue.reconcile(con, dataset)
        done = catalogue.version_of_run(con, dataset, run_id)
        if done is not None:
            path = home.versions_dir(dataset) / done
            return PublishedVersion(done, path, registry.verify_version(path))
        registry.verify_version(staged)
        version, final = _new_version(con, dataset, version)
        copy = _staging_dir(dataset, version)
        try:
            _link_tree(staged, copy)
            manifest = json.loads((copy / registry.MANIFEST).read_text()) | {
                "version": version,
                "gate": dict(gate),
            }
            (copy / registry.MANIFEST).unlink()  # a hard link to the staged manifest: replace, never edit
            atomic_write_text(
                copy / registry.MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str)
            )
            fsync_tree(copy)
        except BaseException:
            shutil.rmtree(copy, ignore_errors=True)
            raise
        return _promote_locked(con, dataset, copy, final, manifest)


def _promote_locked(
    con: duckdb.DuckDBPyConnection, dataset: str, copy: Path, final: Path, manifest: dict[str, Any]
) -> PublishedVersion:
    try:
        os.rename(copy, final)
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    previous = registry.served_version(dataset)
    try:
        fsync_dir(home.versions_dir(dataset))
        _step("renamed")
        registry.verify_version(final)
        registry.set_served_version(dataset, final.name)
    except BaseException:
        if registry.served_version(dataset) != final.name:  # not committed: this call's folder, never served
            shutil.rmtree(final, ignore_errors=True)
        raise
    _step("served")
    catalogue.record(con, dataset, manifest, "publish", previous)
    _step("recorded")
    return PublishedVersion(final.name, final, manifest)


def publish_version(
    pieces: VersionPieces,
    gate: Mapping[str, Any],
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    run_id: str,
    dataset: str,
    data: Mapping[str, Any] | None = None,
    version: str | None = None,
) -> PublishedVersion:
    """Stage and promote into `dataset` in one go (the staging folder is versions/.staging-*, under the
    lock); refuses a failed gate. `data` is the data version (default: `data_version` of the dataset's
    DuckDB)."""
    if not gate.get("passed"):
        raise PublicationRefusedError(f"refusing to publish: {gate.get('reason')}")
    data = dict(data) if data is not None else data_version(home.db_path(dataset))
    with catalogue.locked(dataset), catalogue.connect(dataset) as con:
        catalogue.reconcile(con, dataset)
        version, final = _new_version(con, dataset, version)
        staging = _staging_dir(dataset, version)
        try:
            stage_version(pieces, staging, metrics, config, run_id, data)
            manifest = json.loads((staging / registry.MANIFEST).read_text()) | {
                "version": version,
                "gate": dict(gate),
            }
            atomic_write_text(
                staging / registry.MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str)
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _promote_locked(con, dataset, staging, final, manifest)


def dataset_summary(dataset: str) -> dict[str, Any]:
    """What `ebr datasets` shows of a dataset: the row counts of its log tables, its last ingestion run,
    its served version and how many version folders it holds."""
    db = home.db_path(dataset)
    out: dict[str, Any] = {
        "dataset": dataset,
        "path": str(home.dataset_dir(dataset)),
        "tables": {},
        "last_ingest": None,
        "served_version": registry.served_version(dataset),
        "versions": len(catalogue.version_folders(dataset)),
    }
    if not db.is_file():
        return out
    out["tables"], runs = _counts(db)
    if runs:
        with duckdb.connect(str(db), read_only=True) as con:
            run_id, finished, status = con.execute(
                "SELECT run_id, finished_at, status FROM ingest_runs ORDER BY started_at DESC LIMIT 1"
            ).fetchone()
        out["last_ingest"] = {"run_id": run_id, "finished_at": str(finished), "status": status}
    return out
