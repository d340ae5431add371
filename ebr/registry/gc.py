"""`ebr gc`: the only code that deletes state from a dataset's folder, by an explicit retention policy.

`plan(inventory, policy)` decides, without touching the disk, what goes: published versions beyond the
`keep_versions` newest (never the served one, nor the one served before it: the rollback target), with
their engine state (engine/<version>/); run folders beyond the `keep_runs` newest; the model checkpoints
(*.ckpt) of kept runs beyond the `keep_checkpoints` newest; engine state of no kept version or run; and
staging folders left by interrupted publications. Version folders the registry does not know are never
deleted (they may be newer than a restored database): they are reported, for `ebr versions --adopt`.
`collect(policy, dataset, dry_run)` takes the inventory and applies the plan under the catalogue's lock,
logging each deletion; a deleted version keeps its registry row with status `deleted`, so its name is never
reused.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from ebr import home, registry
from ebr.config import GcConfig
from ebr.registry import catalogue

log = logging.getLogger(__name__)

RUN_STARTED = re.compile(r"-(\d{8}T\d{6})-")
KINDS = ("version", "engine_state", "run", "checkpoint", "staging")


@dataclass(frozen=True)
class Run:
    run_id: str
    started: str  # sortable: the run id's timestamp, else the folder's mtime as ISO
    checkpoints: Sequence[Path] = ()


@dataclass(frozen=True)
class Inventory:
    """What a dataset's folder holds, as `plan` needs it."""

    versions: Sequence[str]  # published (registered, not deleted), with a folder or not
    served: str | None
    previous: str | None  # the version served before the served one
    unknown: Sequence[str] = ()  # version folders not in the registry
    leftovers: Sequence[str] = ()  # versions gc deleted whose folder a crash left
    staging: Sequence[str] = ()  # versions/.staging-* folders
    runs: Sequence[Run] = ()
    engine_states: Sequence[str] = ()  # names of the folders in engine/


@dataclass(frozen=True)
class Deletion:
    kind: str  # one of KINDS
    name: str  # the version, run id, folder or checkpoint path relative to the dataset's folder
    path: Path


@dataclass
class GcReport:
    dry_run: bool
    deletions: list[Deletion]
    bytes_freed: int
    kept_versions: list[str]
    unknown_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "bytes_freed": self.bytes_freed,
            "kept_versions": self.kept_versions,
            "unknown_versions": self.unknown_versions,
            "deletions": [{"kind": d.kind, "name": d.name, "path": str(d.path)} for d in self.deletions],
        }


def _number(version: str) -> int:
    return int(version[1:])


def kept_versions(inventory: Inventory, policy: GcConfig) -> list[str]:
    """The newest `keep_versions` published versions plus the served one and the rollback target, sorted."""
    newest = sorted(inventory.versions, key=_number)[-policy.keep_versions :] if policy.keep_versions else []
    pinned = {v for v in (inventory.served, inventory.previous) if v is not None}
    return sorted(set(newest) | pinned, key=_number)


def plan(inventory: Inventory, policy: GcConfig, root: Path) -> list[Deletion]:
    """What `policy` deletes from a dataset's folder `root` holding `inventory` (pure: nothing is read or
    deleted)."""
    for key in ("keep_versions", "keep_runs", "keep_checkpoints"):
        if getattr(policy, key) < 0:
            raise ValueError(f"gc.{key} must be at least 0, got {getattr(policy, key)}")
    versions_dir = root / "versions"
    kept = set(kept_versions(inventory, policy))
    out = [Deletion("staging", name, versions_dir / name) for name in sorted(inventory.staging)]
    gone = sorted((set(inventory.versions) - kept) | set(inventory.leftovers), key=_number)
    out += [Deletion("version", v, versions_dir / v) for v in gone]
    runs = sorted(inventory.runs, key=lambda r: (r.started, r.run_id), reverse=True)
    kept_runs, old_runs = runs[: policy.keep_runs], runs[policy.keep_runs :]
    out += [
        Deletion("run", r.run_id, root / "runs" / r.run_id) for r in sorted(old_runs, key=lambda r: r.run_id)
    ]
    for run in kept_runs[policy.keep_checkpoints :]:
        out += [Deletion("checkpoint", str(p.relative_to(root)), p) for p in sorted(run.checkpoints)]
    live = kept | set(inventory.unknown) | {f"candidate-{r.run_id}" for r in kept_runs}
    out += [
        Deletion("engine_state", name, root / "engine" / name)
        for name in sorted(inventory.engine_states)
        if name not in live
    ]
    return out


def _started(run: Path) -> str:
    match = RUN_STARTED.search(run.name)
    return match.group(1) if match else f"{datetime.fromtimestamp(run.stat().st_mtime, UTC):%Y%m%dT%H%M%S}"


def _previous(con: duckdb.DuckDBPyConnection, served: str | None, versions: set[str]) -> str | None:
    """The version served before `served`: the last serving event's `previous`, else the next older one."""
    if served is None:
        return None
    row = con.execute(
        "SELECT previous FROM serving_events WHERE version = ? AND previous IS NOT NULL "
        "ORDER BY ts DESC LIMIT 1",
        [served],
    ).fetchone()
    if row and row[0] in versions:
        return row[0]
    older = [v for v in versions if _number(v) < _number(served)]
    return max(older, key=_number) if older else None


def inventory(con: duckdb.DuckDBPyConnection, dataset: str) -> Inventory:
    """The dataset's versions, runs, checkpoints, engine state and staging leftovers (call under the
    lock)."""
    found = catalogue.reconcile(con, dataset)
    folders = set(catalogue.version_folders(dataset))
    published = catalogue.published(con)
    deleted = catalogue.registered(con) - published
    served = registry.served_version(dataset)
    runs_dir, engine_dir = home.runs_dir(dataset), home.engine_dir(dataset)
    runs = [
        Run(p.name, _started(p), tuple(sorted(p.rglob("*.ckpt"))))
        for p in (sorted(runs_dir.iterdir()) if runs_dir.is_dir() else [])
        if p.is_dir()
    ]
    return Inventory(
        versions=sorted(published, key=_number),
        served=served,
        previous=_previous(con, served, published),
        unknown=found["unknown"],
        leftovers=sorted(deleted & folders, key=_number),
        staging=found["staging"],
        runs=runs,
        engine_states=sorted(p.name for p in engine_dir.iterdir() if p.is_dir())
        if engine_dir.is_dir()
        else [],
    )


def bytes_freed(paths: Iterable[Path]) -> int:
    """The bytes deleting `paths` (files or folders) frees: a file hard-linked from elsewhere (a version's
    files are links to its run's candidate) counts only when every link to it is among them."""
    seen: dict[tuple[int, int], list[int]] = {}  # inode -> [size, links, links seen]
    for path in paths:
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
        )
        for f in files:
            st = f.lstat()
            entry = seen.setdefault((st.st_dev, st.st_ino), [st.st_size, st.st_nlink, 0])
            entry[2] += 1
    return sum(size for size, links, hits in seen.values() if hits >= links)


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def collect(policy: GcConfig, dataset: str, dry_run: bool = False) -> GcReport:
    """Apply `policy` to `dataset` (or, with dry_run, only report what it would delete)."""
    with catalogue.locked(dataset), catalogue.connect(dataset) as con:
        inv = inventory(con, dataset)
        deletions = [d for d in plan(inv, policy, home.dataset_dir(dataset)) if os.path.lexists(d.path)]
        report = GcReport(
            dry_run,
            deletions,
            bytes_freed(d.path for d in deletions),
            kept_versions(inv, policy),
            list(inv.unknown),
        )
        if dry_run:
            return report
        for d in deletions:
            if d.kind == "version":  # the row first: a crash then leaves a leftover, never a half version
                con.execute("UPDATE published_versions SET status = 'deleted' WHERE version = ?", [d.name])
            _delete(d.path)
            log.warning("gc: deleted %s %s (%s)", d.kind, d.name, d.path)
    return report
