"""The home folder: every piece of state (DuckDB file, runs, published versions) lives under it."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = PROJECT_ROOT / "ebr_home"


def home() -> Path:
    """The home folder: $EBR_HOME if set, else `ebr_home/` inside the project folder. Created on demand."""
    path = Path(os.environ.get("EBR_HOME") or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    """The DuckDB file holding ingested logs, quarantine, run records and the version registry."""
    return home() / "ebr.duckdb"


def worlds_dir() -> Path:
    """Where simulated worlds are written by default."""
    return home() / "worlds"


def runs_dir() -> Path:
    """One sub-folder per run (retrain, evaluation, sweep job): report.json, config.yaml, models."""
    return home() / "runs"


def versions_dir() -> Path:
    """Published index versions, one immutable folder each."""
    return home() / "versions"


def conf_dir() -> Path:
    """The Hydra config folder shipped with the project."""
    return PROJECT_ROOT / "conf"
