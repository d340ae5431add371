"""Published versions on disk: manifests with checksums, verification on load, and the serving pointer.

Each dataset has its own (ebr/home.py): a version is an immutable folder under the dataset's versions/;
`serving.json` in the dataset's folder names the served one and is
replaced atomically (write a temporary file, fsync, rename), so a reader always sees an old or a new pointer,
never half of one. The catalogue of published versions (DuckDB) is `ebr.registry.catalogue`; writing and
promoting a version is `ebr.registry.publication`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ebr import home
from ebr.io import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
POINTER = "serving.json"


class CorruptVersionError(RuntimeError):
    """A version folder whose files do not match its manifest."""


class NoServedVersionError(RuntimeError):
    """Nothing has been published (or rolled back to) in this home yet."""


def version_files(version_dir: Path) -> list[str]:
    """Every file of a version except its manifest, as sorted relative POSIX paths."""
    return sorted(
        p.relative_to(version_dir).as_posix()
        for p in version_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )


def write_manifest(version_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the sha256 of every file in `version_dir` to `manifest` and write it as manifest.json."""
    full = dict(manifest, files={rel: sha256_file(version_dir / rel) for rel in version_files(version_dir)})
    atomic_write_text(version_dir / MANIFEST, json.dumps(full, indent=2, sort_keys=True, default=str))
    return full


def verify_version(version_dir: Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise CorruptVersionError."""
    manifest_path = version_dir / MANIFEST
    if not manifest_path.is_file():
        raise CorruptVersionError(f"{version_dir}: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptVersionError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    present = set(version_files(version_dir))
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            raise CorruptVersionError(f"{version_dir / rel}: listed in the manifest but missing")
        if sha256_file(version_dir / rel) != digest:
            raise CorruptVersionError(f"{version_dir / rel}: checksum mismatch (file changed or corrupted)")
    extra = sorted(present - set(expected))
    if extra:
        raise CorruptVersionError(f"{version_dir / extra[0]}: file not listed in the manifest")
    return manifest


def served_version(dataset: str) -> str | None:
    """The name of the version served for `dataset`, or None when nothing is served."""
    pointer = home.dataset_dir(dataset) / POINTER
    if not pointer.is_file():
        return None
    return json.loads(pointer.read_text())["version"]


def served_version_dir(dataset: str, verify: bool = True) -> Path:
    """The folder of the version served for `dataset`, checked against its manifest unless verify=False."""
    version = served_version(dataset)
    if version is None:
        raise NoServedVersionError(
            f"no version is served in dataset {dataset} ({home.dataset_dir(dataset)}): "
            "run a retrain that publishes one"
        )
    version_dir = home.versions_dir(dataset) / version
    if verify:
        verify_version(version_dir)
    return version_dir


def set_served_version(dataset: str, version: str) -> None:
    """Point the serving of `dataset` at `version` (which must exist), atomically."""
    if not (home.versions_dir(dataset) / version / MANIFEST).is_file():
        raise FileNotFoundError(f"{home.versions_dir(dataset) / version}: no such published version")
    atomic_write_text(home.dataset_dir(dataset) / POINTER, json.dumps({"version": version}))
