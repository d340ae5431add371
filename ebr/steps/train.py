"""Step `train-towers`: every model of train.models (but the one mining round 0 trains), each exported as a
query tower with its document embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ebr.models.features import FeatureSet
from ebr.models.training import export_trained, train_tower
from ebr.runners import SERIAL, Shards
from ebr.steps.mine import EASY_MODEL, mines


def train_models(cfg: DictConfig, features: FeatureSet, out: Path, shards: Shards = SERIAL) -> dict[str, Any]:
    """Train every model of train.models, except the one mining round 0 trains (ebr/steps/mine.py);
    export each query tower and save its document embeddings."""
    trained = {}
    for name in [str(n) for n in cfg.train.models if str(n) != EASY_MODEL or not mines(cfg)]:
        result = train_tower(cfg, features, name, out / name, shards=shards)
        exported = export_trained(result.checkpoint, features, out, name, shards)
        trained[name] = exported | {"training": result.stats}
    return {"models": trained}
