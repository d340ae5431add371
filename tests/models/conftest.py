"""Fixtures of the models tests over the tiny log of tiny_logs.py, in a real DuckDB file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import DictConfig
from tiny_logs import FAST, tiny_tables, write_db

from ebr.config import load_config
from ebr.models.features import FeatureSet, build_features, split_from_config
from ebr.models.training import TrainedTower, train_tower


@pytest.fixture(scope="session")
def tiny_tables_() -> dict[str, pd.DataFrame]:
    return tiny_tables()


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory: pytest.TempPathFactory, tiny_tables_: dict[str, pd.DataFrame]) -> Path:
    return write_db(tiny_tables_, tmp_path_factory.mktemp("tiny") / "ebr.duckdb")


@pytest.fixture(scope="session")
def fast_cfg() -> DictConfig:
    return load_config(FAST)


@pytest.fixture(scope="session")
def tiny_features(tiny_db: Path, fast_cfg: DictConfig) -> FeatureSet:
    split = split_from_config(tiny_db, fast_cfg)
    return build_features(tiny_db, fast_cfg, split)


@pytest.fixture(scope="session")
def trained_unified(
    tmp_path_factory: pytest.TempPathFactory, fast_cfg: DictConfig, tiny_features: FeatureSet
) -> TrainedTower:
    return train_tower(fast_cfg, tiny_features, "unified_hnm", tmp_path_factory.mktemp("unified_hnm"))
