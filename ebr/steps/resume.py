"""Resumable steps: each step of a run writes its outputs under runs/<run_id>/<step>/ and, last, a
`<step>/done.json` with its summary. Re-running a run (same run_id) skips every step whose done.json exists,
so a retrain that failed resumes from the failed step instead of recomputing finished ones."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ebr import registry
from ebr.io import atomic_write_text
from ebr.registry.publication import add_stage

DONE = "done.json"


def step_dir(run_dir: Path, step: str) -> Path:
    return Path(run_dir) / step


def finished(run_dir: Path, step: str) -> dict[str, Any] | None:
    """The summary of a finished step, or None."""
    done = step_dir(run_dir, step) / DONE
    return json.loads(done.read_text()) if done.is_file() else None


def run_step(run_dir: Path, step: str, body: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run `body(out_dir)` unless the step already finished; a partial earlier attempt is discarded first."""
    summary = finished(run_dir, step)
    if summary is not None:
        return summary | {"resumed": True}
    out = step_dir(run_dir, step)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    summary = body(out)
    atomic_write_text(out / DONE, json.dumps(summary, indent=2, default=str))
    return summary


def keep_stage(candidate: Path, name: str, folder: Path, summary: Mapping[str, Any]) -> None:
    """A finished stage step (`folder`: its stage folder; none: the step staged nothing) whose candidate was
    staged anew since (a resumed run re-ran `serving`) adds its stage to the new candidate again; a
    candidate published since (moved away) or one that has the stage is left alone."""
    manifest = candidate / registry.MANIFEST
    if not folder.is_dir() or not manifest.is_file():
        return
    if name not in (json.loads(manifest.read_text()).get("stages") or {}):
        add_stage(
            candidate, name, folder, {k: v for k, v in summary.items() if k not in ("resumed", "trained")}
        )
