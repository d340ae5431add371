"""The features every step after ingestion reads: the time split and the feature tables (rebuilt from the
database on resume: they are not stored with the run)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ebr.models.features import FeatureSet, build_features, split_from_config


def features_for(cfg: DictConfig, db_path: Path) -> FeatureSet:
    return build_features(db_path, cfg, split_from_config(db_path, cfg))
