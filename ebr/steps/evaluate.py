"""Step `evaluate`: the towers' recall table on the evaluation sessions (ebr.evaluation.recall), with the
baselines and, where the logs have them, the simulator's intents (read here and nowhere else)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ebr import home
from ebr.evaluation.recall import evaluate, markdown_report
from ebr.io import atomic_write_text
from ebr.models.features import FeatureSet
from ebr.models.training import load_module
from ebr.runners import SERIAL, Shards

log = logging.getLogger(__name__)


def intents_path(cfg: DictConfig) -> Path:
    """eval.intents_path, else ground_truth/intents.parquet of the logs folder or of the simulated world."""
    if cfg.eval.intents_path:
        return Path(cfg.eval.intents_path)
    if cfg.data.logs_dir:
        return Path(cfg.data.logs_dir) / "ground_truth" / "intents.parquet"
    world = home.world_dir(str(cfg.data.scale), int(cfg.data.world_seed))
    return world / "ground_truth" / "intents.parquet"


def load_intents(path: Path) -> pd.DataFrame | None:
    """The intents table, or None (with a log line) when the file does not exist."""
    if not path.exists():
        log.info("no intents at %s: recall against intents is skipped", path)
        return None
    return pd.read_parquet(path, columns=["session_id", "target_doc_id", "query_form"])


def evaluate_models(
    cfg: DictConfig, features: FeatureSet, models: Mapping[str, Any], out: Path, shards: Shards = SERIAL
) -> dict[str, Any]:
    """Step `evaluate`: the towers' recall table (models x verticals x K) with the baselines, on the
    evaluation sessions; report.json and report.md in `out`."""
    modules = {name: load_module(Path(info["checkpoint"])) for name, info in models.items()}
    exported = {n: np.load(i["embeddings"], mmap_mode="r") for n, i in models.items() if i.get("embeddings")}
    report = evaluate(
        cfg, features, modules, load_intents(intents_path(cfg)), shards=shards, doc_vectors=exported
    )
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "report.md", markdown_report(report))
    return report
