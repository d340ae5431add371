"""Fixtures of the ingestion tests (helpers in tests/ingest/logs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .logs import clean_logs, run_ingest, write_logs


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    """The clean log set as Parquet files."""
    return write_logs(tmp_path / "logs", clean_logs())


@pytest.fixture(scope="session")
def _loaded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("loaded")
    db = tmp / "ebr.duckdb"
    run_ingest(write_logs(tmp / "logs", clean_logs()), db)
    return db


@pytest.fixture
def loaded_db(tmp_path: Path, _loaded_template: Path) -> Path:
    """A database holding the clean log set (loaded once per session, copied for each test)."""
    db = tmp_path / "db" / "ebr.duckdb"
    db.parent.mkdir()
    shutil.copy(_loaded_template, db)
    return db
