"""Step `mine-and-train`: validated mining rounds (ebr/mining/rounds.py); round 0 is exported as `unified`,
the last round, trained on offline hard negatives mixed with easy ones, as `unified_ohnm`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ebr.mining.rounds import run_mining
from ebr.models.features import FeatureSet
from ebr.models.training import export_trained
from ebr.runners import SERIAL, Shards

EASY_MODEL = "unified"  # the unified tower on random negatives: mining round 0
MINED_MODEL = "unified_ohnm"  # the unified tower trained on offline hard negatives mixed with easy ones


def mines(cfg: DictConfig) -> bool:
    """Whether mining trains beyond round 0 (offline hard negatives)."""
    return cfg.mining.model is not None and cfg.mining.negatives != "random" and int(cfg.mining.rounds) > 0


def mine_and_train(
    cfg: DictConfig, db_path: Path, features: FeatureSet, out: Path, run_id: str, shards: Shards = SERIAL
) -> dict[str, Any]:
    """The mining rounds and their trainings; the models exported as `unified` (round 0, when mining goes
    beyond it) and `unified_ohnm` (the last round), and the mined tables' realised counts. With
    `mining.model: null` nothing is mined (e.g. a log whose models are text towers only)."""
    if cfg.mining.model is None:
        return {"models": {}, "tables": [], "stages": []}
    report = run_mining(cfg, db_path, out, run_id, features, shards)
    stages = report["stages"]
    models = {MINED_MODEL: export_trained(Path(report["checkpoint"]), features, out, MINED_MODEL, shards)}
    if mines(cfg) and stages[0]["checkpoint"]:
        models[EASY_MODEL] = export_trained(Path(stages[0]["checkpoint"]), features, out, EASY_MODEL, shards)
    for name, stage in ((EASY_MODEL, stages[0]), (MINED_MODEL, stages[-1])):
        if name in models and stage.get("training"):
            models[name]["training"] = stage["training"]
    tables = [
        {"stage": s["stage"], **{k: v for k, v in s["counts"].items() if not isinstance(v, dict)}}
        for s in stages
    ]
    return {"models": models, "tables": tables, "stages": stages}
