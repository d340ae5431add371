"""Run folders: every run (retrain, evaluation, sweep job) gets its own folder with its resolved config."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ebr import home


@dataclass(frozen=True)
class Run:
    run_id: str
    path: Path


def new_run_id(prefix: str) -> str:
    """A sortable, unique run id such as `retrain-20261127T204500-3f9a`."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def start_run(cfg: DictConfig, prefix: str, dataset: str, run_id: str | None = None) -> Run:
    """Create the dataset's runs/<run_id>/ and save the resolved config in it as config.yaml."""
    run_id = run_id or new_run_id(prefix)
    path = home.runs_dir(dataset) / run_id
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return Run(run_id=run_id, path=path)
