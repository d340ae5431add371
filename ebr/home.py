"""The home folder: every piece of state lives under it, per dataset.

A dataset is a named log source with its own folder `datasets/<name>/`: its DuckDB file (ingested logs,
quarantine, ingestion runs, mined tables, the version registry), its `runs/`, its published `versions/`,
the serving pointer and the engine's realtime state. Shared by all datasets: `worlds/` (the cache of
simulated worlds), `cache/`, and Hydra's `hydra/` and `sweeps/` folders. A simulated world's dataset is
`sim-<scale>-s<seed>`; a team's folder of logs is named by `data.dataset` (default: the folder's name).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = PROJECT_ROOT / "ebr_home"
DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
DB_FILE = "ebr.duckdb"


def home() -> Path:
    """The home folder: $EBR_HOME if set, else `ebr_home/` inside the project folder. Created on demand."""
    path = Path(os.environ.get("EBR_HOME") or DEFAULT_HOME).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_dataset(name: str) -> str:
    """`name` if it is a dataset name (a short slug), else ValueError naming `data.dataset`."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise ValueError(
            f"data.dataset: {name!r} is not a dataset name "
            "(1-48 characters: lowercase letters, digits, '-' or '_', starting with a letter or digit)"
        )
    return name


def sim_dataset(scale: str, seed: int) -> str:
    """The dataset (and world folder) name of the simulated world of `scale` and `seed`."""
    return check_dataset(f"sim-{scale}-s{seed}")


def folder_dataset(logs_dir: str | Path) -> str:
    """The default dataset of a folder of logs: its name, lowercased (ValueError naming data.dataset if that
    is not a dataset name)."""
    name = Path(logs_dir).expanduser().resolve().name.lower()
    if not DATASET_NAME.match(name):
        raise ValueError(
            f"data.dataset: the folder name {name!r} of {logs_dir} is not a dataset name; "
            "give one with data.dataset=NAME / --dataset NAME (lowercase letters, digits, '-', '_')"
        )
    return name


def dataset_dir(name: str) -> Path:
    """The folder of dataset `name` (not created here)."""
    return home() / "datasets" / check_dataset(name)


def db_path(name: str) -> Path:
    """The DuckDB file of a dataset: ingested logs, quarantine, run records and the version registry."""
    return dataset_dir(name) / DB_FILE


def runs_dir(name: str) -> Path:
    """One sub-folder per run of a dataset (retrain, evaluation, sweep job): report.json, config.yaml."""
    return dataset_dir(name) / "runs"


def versions_dir(name: str) -> Path:
    """A dataset's published index versions, one immutable folder each."""
    return dataset_dir(name) / "versions"


def engine_dir(name: str) -> Path:
    """The realtime state (write-ahead log, snapshots) of a dataset's served versions, one folder each."""
    return dataset_dir(name) / "engine"


def datasets() -> list[str]:
    """The names of the datasets in the home, sorted."""
    folder = home() / "datasets"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and DATASET_NAME.match(p.name))


def legacy_hint(name: str) -> str | None:
    """A one-line hint when the home holds state from before datasets (a root ebr.duckdb) and dataset
    `name` has no database yet; None otherwise. Nothing is moved or deleted."""
    old = home() / DB_FILE
    if not old.is_file() or db_path(name).is_file():
        return None
    return (
        f"{old} is from before datasets and is no longer read: state lives in {home() / 'datasets'}/<name>/ "
        f"(re-ingest the logs, or move it to {db_path(name)} with runs/ and versions/ beside it)"
    )


def worlds_dir() -> Path:
    """Where simulated worlds are written by default (shared by all datasets)."""
    return home() / "worlds"


def world_dir(scale: str, seed: int) -> Path:
    """The cached folder of the simulated world of `scale` and `seed`: worlds/sim-<scale>-s<seed>/."""
    return worlds_dir() / sim_dataset(scale, seed)


def conf_dir() -> Path:
    """The Hydra config folder shipped with the project."""
    return PROJECT_ROOT / "conf"
