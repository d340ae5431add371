"""Training step: Lightning training of the text and unified towers on a FeatureSet, and batch inference.

Model names (docs/models.md): `text` (text features, random negatives), `unified` (all features, random
negatives), `unified_hnm` (all features, random plus `model.hard_negatives` online in-batch hard negatives).
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from ebr.models.datamodule import TripletDataModule
from ebr.models.features import FeatureSet
from ebr.models.fields import Fields, n_rows, take
from ebr.models.lightning_module import TwoTowerModule
from ebr.models.mined_data import MinedTripletDataModule
from ebr.models.towers import (
    DOCUMENT_KINDS,
    MEMBER_FIELDS,
    QUERY_KINDS,
    SOCIAL_FIELDS,
    TEXT_FIELDS,
    GroupSpec,
    Tower,
    TowerSpec,
    encode,
    field_specs,
)
from ebr.progress import report_progress
from ebr.runners import map_shards, row_shards

log = logging.getLogger(__name__)

MODEL_NAMES = ("text", "unified", "unified_hnm")


@dataclass(frozen=True)
class TrainedTower:
    name: str
    checkpoint: Path
    stats: dict[str, Any]


def model_settings(cfg: DictConfig, name: str) -> dict[str, Any]:
    """`cfg.model` with the tower kind and hard negatives the model name stands for."""
    if name not in MODEL_NAMES:
        raise ValueError(f"train.models: unknown model {name!r} (expected one of {', '.join(MODEL_NAMES)})")
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    settings["tower"] = "text" if name == "text" else "unified"
    if name != "unified_hnm":
        settings["hard_negatives"] = 0
    elif int(settings["hard_negatives"]) < 1:
        raise ValueError("model.hard_negatives must be at least 1 to train unified_hnm")
    return settings


def configured_model_name(cfg: DictConfig) -> str:
    """The model name of `cfg.model` as configured (what a retrain publishes)."""
    if cfg.model.tower == "text":
        return "text"
    return "unified_hnm" if int(cfg.model.hard_negatives) > 0 else "unified"


def tower_fields(cfg: DictConfig, features: FeatureSet, tower: str) -> tuple[list[str], list[str], list[str]]:
    """(query fields, document fields, notes). Signals missing from the logs are dropped with a note."""
    if tower == "text":
        return list(TEXT_FIELDS), list(TEXT_FIELDS), []
    if tower != "unified":
        raise ValueError(f"model.tower: expected text or unified, got {tower!r}")
    query, document = list(cfg.features.unified.query), list(cfg.features.unified.document)
    notes = []
    dropped = set()
    if not features.signals["friendships"]:
        dropped |= set(SOCIAL_FIELDS)
        notes.append("no friendships table: the unified tower has no social features")
    if not features.signals["memberships"]:
        dropped |= set(MEMBER_FIELDS)
        notes.append("no memberships table: documents have no members' locations or social aggregates")
    if not features.signals["users"]:
        notes.append("no users table: searchers have no home location")
    for note in notes:
        log.warning(note)
    return [f for f in query if f not in dropped], [f for f in document if f not in dropped], notes


def build_module(cfg: DictConfig, features: FeatureSet, name: str) -> tuple[TwoTowerModule, list[str]]:
    settings = model_settings(cfg, name)
    query, document, notes = tower_fields(cfg, features, settings["tower"])
    output_dim = int(settings["output_dim"])
    if settings["tower"] == "text":
        groups = (GroupSpec("text", TEXT_FIELDS, output_dim),)
    else:
        # a group needs all its fields on both sides; a dropped group's dimensions go to the free MLP
        groups = tuple(
            GroupSpec(group, tuple(g["fields"]), int(g["dim"]))
            for group, g in settings["groups"].items()
            if set(g["fields"]) <= set(query) & set(document)
        )
    dims = (int(settings["embedding_dim"]), tuple(settings["hidden_dims"]), output_dim, groups)
    q_spec = TowerSpec(field_specs(query, QUERY_KINDS, features.sizes), *dims)
    d_spec = TowerSpec(field_specs(document, DOCUMENT_KINDS, features.sizes), *dims)
    module = TwoTowerModule(
        q_spec.to_dict(),
        d_spec.to_dict(),
        share=bool(settings["share"]),
        margin=float(settings["margin"]),
        hard_negatives=int(settings["hard_negatives"]),
        lr=float(cfg.train.lr),
    )
    return module, notes


def train_tower(
    cfg: DictConfig,
    features: FeatureSet,
    name: str,
    out_dir: Path,
    init_from: Path | None = None,
    mined: pd.DataFrame | None = None,
    triplets: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> TrainedTower:
    """Train model `name` on the training sessions; checkpoints and CSV logs under `out_dir`.

    init_from: a checkpoint whose parameters of matching name and shape initialise the model (transfer
    learning). mined: optional (session_id, doc_id) negatives added to the random ones (train.mined_negatives
    per positive). triplets: (positives, negatives) of a validated mined round (ebr/mining/mine.py), used
    as they are, instead of the logged positives and per-batch random negatives (ebr/models/mined_data.py)."""
    tcfg = cfg.train
    if tcfg.torch_threads:
        torch.set_num_threads(int(tcfg.torch_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module, notes = build_module(cfg, features, name)
    transferred = _transfer(module, init_from) if init_from else 0
    query_fields = [f.name for f in module.query_tower.spec.fields]
    doc_fields = [f.name for f in module.document_tower.spec.fields]
    if triplets is not None:
        data = MinedTripletDataModule(
            features, query_fields, doc_fields, *triplets, batch_size=int(tcfg.batch_size), seed=int(cfg.seed)
        )
    else:
        data = TripletDataModule(
            features,
            query_fields,
            doc_fields,
            batch_size=int(tcfg.batch_size),
            random_negatives=int(tcfg.random_negatives),
            positives=str(tcfg.positives),
            mined=mined,
            mined_negatives=int(tcfg.mined_negatives),
            seed=int(cfg.seed),
        )
    out_dir = Path(out_dir)
    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0, enable_version_counter=False
    )
    trainer = L.Trainer(
        max_epochs=int(tcfg.epochs),
        accelerator=str(tcfg.accelerator),
        devices=tcfg.devices,
        strategy=str(tcfg.strategy),
        num_nodes=int(tcfg.num_nodes),
        precision=tcfg.precision,
        enable_progress_bar=bool(tcfg.progress_bar),
        enable_model_summary=False,
        logger=_logger(str(tcfg.logger), out_dir),
        callbacks=[checkpoints, TrainingProgress(f"train {name}")],
        default_root_dir=out_dir,
        log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    stats = {
        "model": name,
        "tower": model_settings(cfg, name)["tower"],
        "hard_negatives": module.hparams.hard_negatives,
        "positives": data.n_pairs,
        "epochs": int(tcfg.epochs),
        "seconds": round(seconds, 2),
        "pairs_per_s": round(module.pairs_seen / seconds, 1),
        "triplets_per_s": round(module.triplets_seen / seconds, 1),
        "final_loss": float(trainer.callback_metrics.get("train/loss_epoch", float("nan"))),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(module.device),
        "processes": trainer.world_size,  # > 1 with DDP: pairs_seen counts this process's share only
        "parameters": sum(p.numel() for p in module.parameters()),
        "transferred_parameters": transferred,
        "notes": notes,
    }
    if torch.cuda.is_available():
        stats["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    log.info("trained %s: %s", name, stats)
    # the path rank 0 wrote (with ddp_spawn this process's callback never saw the save)
    last = out_dir / "checkpoints" / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    if not last.is_file():
        raise FileNotFoundError(f"training {name}: no checkpoint at {last}")
    return TrainedTower(name, last, stats)


class TrainingProgress(L.Callback):
    """Reports the share of optimizer steps done (ebr/progress.py) every `every` steps and at the end."""

    def __init__(self, what: str, every: int = 50) -> None:
        self.what, self.every = what, every

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            report_progress(self.what, trainer.global_step / max(trainer.estimated_stepping_batches, 1))

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        report_progress(self.what, 1.0)


def _logger(kind: str, out_dir: Path) -> CSVLogger | TensorBoardLogger:
    if kind == "csv":
        return CSVLogger(out_dir, name="logs")
    if kind == "tensorboard":
        return TensorBoardLogger(out_dir, name="logs")
    raise ValueError(f"train.logger: expected csv or tensorboard, got {kind!r}")


def _transfer(module: TwoTowerModule, checkpoint: Path) -> int:
    """Copy parameters of matching name and shape from `checkpoint`; returns how many tensors were copied."""
    source = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    target = module.state_dict()
    matched = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    module.load_state_dict(matched, strict=False)
    log.info("initialised %d of %d tensors from %s", len(matched), len(target), checkpoint)
    return len(matched)


def load_module(checkpoint: Path) -> TwoTowerModule:
    """A trained module from its checkpoint, on CPU, in eval mode."""
    return TwoTowerModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()


def embed_documents(module: TwoTowerModule, features: FeatureSet, batch_size: int = 4096) -> np.ndarray:
    """float32 L2-normalised embeddings of every document (rows in features.doc_ids order), in shards."""
    return encode_in_shards(module.document_tower, features.doc_fields, batch_size)


def embed_queries(
    module: TwoTowerModule, features: FeatureSet, session_rows: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """float32 L2-normalised query embeddings of the given session rows, in shards."""
    fields = take(
        {f.name: features.session_fields[f.name] for f in module.query_tower.spec.fields}, session_rows
    )
    return encode_in_shards(module.query_tower, fields, batch_size)


def encode_in_shards(tower: Tower, fields: Fields, batch_size: int = 4096) -> np.ndarray:
    """`encode` mapped over shards of rows on the current runner (ebr/runners.py), rows in order."""
    columns = {f.name: fields[f.name] for f in tower.spec.fields}
    parts = map_shards(
        partial(_encode_rows, tower, columns, batch_size), row_shards(n_rows(columns)), "inference"
    )
    return np.concatenate(parts) if parts else np.zeros((0, tower.spec.output_dim), np.float32)


def _encode_rows(tower: Tower, fields: Fields, batch_size: int, rows: slice) -> np.ndarray:
    return encode(tower, take(fields, np.arange(rows.start, rows.stop)), batch_size)
