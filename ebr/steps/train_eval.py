"""Train the configured towers on the ingested logs and evaluate them with the baselines (`ebr train`).

Writes into `out_dir`: <model>/ (checkpoints, CSV logs), towers/<model>/ (exported query towers),
embeddings/<model>.npy + embeddings/doc_ids.npy (document embeddings), report.json and report.md.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ebr.evaluation.recall import evaluate, markdown_report
from ebr.io import atomic_write_text
from ebr.models.export import export_query_tower
from ebr.models.features import build_features, split_from_config
from ebr.models.training import embed_documents, load_module, train_tower
from ebr.runners import SERIAL, Shards
from ebr.steps.evaluate import intents_path, load_intents

log = logging.getLogger(__name__)


def train_and_evaluate(
    cfg: DictConfig, db_path: Path, out_dir: Path, shards: Shards = SERIAL
) -> dict[str, Any]:
    """Features -> train every model of train.models -> export -> evaluate; returns the report dict."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    split = split_from_config(db_path, cfg)
    features = build_features(db_path, cfg, split)
    feature_seconds = time.perf_counter() - started
    modules, training = {}, {}
    (out_dir / "embeddings").mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings" / "doc_ids.npy", features.doc_ids)
    for name in cfg.train.models:
        trained = train_tower(cfg, features, str(name), out_dir / str(name), shards=shards)
        module = load_module(trained.checkpoint)
        export_query_tower(
            module.query_tower, features.featurizer, out_dir / "towers" / str(name), dict(module.hparams)
        )
        np.save(out_dir / "embeddings" / f"{name}.npy", embed_documents(module, features, shards=shards))
        modules[str(name)] = module
        training[str(name)] = {**trained.stats, "checkpoint": str(trained.checkpoint)}
    intents_file = intents_path(cfg)
    report = evaluate(cfg, features, modules, load_intents(intents_file), shards=shards)
    report.update(
        {
            "split": split.summary(),
            "features": {**features.stats, "signals": features.signals, "seconds": round(feature_seconds, 2)},
            "training": training,
            "intents_path": str(intents_file),
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
    )
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out_dir / "report.md", markdown_report(report))
    return report
