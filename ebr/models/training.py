"""Training step: Lightning training of the text and unified towers on a FeatureSet, and batch inference.

Model names (docs/models.md): `text` (text features, random negatives), `unified` (all features, random
negatives), `unified_hnm` (all features, random plus `model.hard_negatives` online in-batch hard negatives).
"""

from __future__ import annotations

import logging
import math
import resource
import time
import warnings
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from ebr.models.datamodule import TripletDataModule
from ebr.models.export import export_query_tower
from ebr.models.features import FeatureSet
from ebr.models.fields import Bags, Fields, n_rows, take
from ebr.models.lightning_module import TwoTowerModule
from ebr.models.mined_data import MinedTripletDataModule
from ebr.models.specs import (
    DOCUMENT_KINDS,
    EXTRA_KINDS,
    MEMBER_FIELDS,
    QUERY_KINDS,
    SOCIAL_FIELDS,
    TEXT_FIELDS,
    TOWER_KINDS,
    GroupSpec,
    TowerSpec,
    field_specs,
)
from ebr.models.towers import Tower, encode
from ebr.runners import SERIAL, Shards

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("hashed", "frozen", "finetune")


@dataclass(frozen=True)
class TrainedTower:
    name: str
    checkpoint: Path
    stats: dict[str, Any]


@dataclass(frozen=True)
class Variant:
    """A model of `train.variants` (conf/train): its tower, its text encoder, its online hard negatives.

    tower: text (text features only) | unified (text + location + social + context).
    text: hashed (character trigrams and words, trained from scratch) | frozen (a pretrained sentence
    encoder's embeddings as they are, `text_pretrained`) | finetune (that encoder inside the tower, trained).
    A text tower with a frozen encoder has no parameters: it is the pretrained model itself (no training).
    """

    name: str
    tower: str
    text: str = "hashed"
    hard_negatives: int = 0
    margin: float | None = None  # None: model.margin
    encoder_lr: float = 2e-5  # AdamW lr of a fine-tuned encoder's parameters (train.encoder_lr) ...
    head_lr: float = 1e-3  # ... and of the tower's other parameters then (train.head_lr)
    train: dict[str, Any] = field(default_factory=dict)  # train.* settings of this variant (batch_size, ...)

    def __post_init__(self) -> None:
        key = f"train.variants.{self.name}"
        allowed = {"batch_size", "random_negatives", "epochs", "min_steps", "steps", "lr", "torch_threads"}
        unknown = set(self.train) - allowed
        if unknown:
            raise ValueError(f"{key}.train: settings {sorted(unknown)} cannot differ per variant")
        if self.tower not in TOWER_KINDS:
            raise ValueError(f"{key}.tower: expected one of {TOWER_KINDS}, got {self.tower!r}")
        if self.text not in TEXT_ENCODERS:
            raise ValueError(f"{key}.text: expected one of {TEXT_ENCODERS}, got {self.text!r}")
        if self.hard_negatives < 0:
            raise ValueError(f"{key}.hard_negatives must be >= 0, got {self.hard_negatives}")

    @property
    def trains(self) -> bool:
        return not (self.tower == "text" and self.text == "frozen")

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The fields of the text group (sub-tower) of this variant."""
        return {"hashed": TEXT_FIELDS, "frozen": ("text_pretrained",), "finetune": ("text_raw",)}[self.text]


def variant(cfg: DictConfig, name: str) -> Variant:
    """The variant `name` of train.variants."""
    variants = cfg.train.variants
    if name not in variants:
        raise ValueError(f"train.models: unknown model {name!r} (train.variants has {', '.join(variants)})")
    given = {k: v for k, v in OmegaConf.to_container(variants[name], resolve=True).items() if v is not None}
    unknown = set(given) - {f.name for f in fields(Variant)} | ({"name"} & set(given))
    if unknown:
        raise ValueError(f"train.variants.{name}: unknown keys {sorted(unknown)}")
    return Variant(name=name, **{"encoder_lr": cfg.train.encoder_lr, "head_lr": cfg.train.head_lr, **given})


def train_settings(cfg: DictConfig, v: Variant) -> DictConfig:
    """train.* with the variant's own settings (a fine-tuned transformer wants small batches, few steps)."""
    return OmegaConf.merge(cfg.train, v.train)


def tower_fields(cfg: DictConfig, features: FeatureSet, v: Variant) -> tuple[list[str], list[str], list[str]]:
    """(query fields, document fields, notes). Signals missing from the logs are dropped with a note."""
    if v.tower == "text":
        return list(v.text_fields), list(v.text_fields), []
    query, document = list(cfg.features.unified.query), list(cfg.features.unified.document)
    document += sorted(n for n in features.sizes if n.startswith(tuple(EXTRA_KINDS)))
    if v.text != "hashed":  # the text group reads the encoder; trigrams and words stay in the free MLP
        query, document = [*query, *v.text_fields], [*document, *v.text_fields]
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
    v = variant(cfg, name)
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    query, document, notes = tower_fields(cfg, features, v)
    output_dim = int(settings["output_dim"])
    passthrough = None
    if v.tower == "text" and v.text != "hashed":  # the pretrained encoder is the tower
        output_dim, passthrough = int(features.sizes[v.text_fields[0]]), v.text_fields[0]
        groups: tuple[GroupSpec, ...] = ()
    elif v.tower == "text":
        groups = (GroupSpec("text", TEXT_FIELDS, output_dim),)
    else:
        # a group needs all its fields on both sides; a dropped group's dimensions go to the free MLP
        configured = dict(settings["groups"])
        configured["text"] = dict(configured["text"], fields=list(v.text_fields))
        groups = tuple(
            GroupSpec(group, tuple(g["fields"]), int(g["dim"]))
            for group, g in configured.items()
            if set(g["fields"]) <= set(query) & set(document)
        )
    encoder = OmegaConf.to_container(cfg.features.pretrained, resolve=True) if v.text == "finetune" else None
    sparse = sparse_embeddings(train_settings(cfg, v), features, v)
    dims = (
        int(settings["embedding_dim"]),
        tuple(settings["hidden_dims"]),
        output_dim,
        groups,
        passthrough,
        sparse,
    )
    q_spec = TowerSpec(field_specs(query, QUERY_KINDS, features.sizes, encoder), *dims)
    d_spec = TowerSpec(field_specs(document, DOCUMENT_KINDS, features.sizes, encoder), *dims)
    module = TwoTowerModule(
        q_spec.to_dict(),
        d_spec.to_dict(),
        share=bool(settings["share"]),
        margin=float(settings["margin"] if v.margin is None else v.margin),
        hard_negatives=v.hard_negatives,
        lr=float(train_settings(cfg, v).lr),
        encoder_lr=v.encoder_lr,
        head_lr=v.head_lr,
    )
    return module, notes


GRADIENTS = ("auto", "sparse", "dense")


def sparse_embeddings(tcfg: DictConfig, features: FeatureSet, v: Variant) -> bool:
    """train.embedding_gradients of the embedding tables: sparse or dense Adagrad steps. `auto`: sparse when
    a batch's document trigram entries (batch x (1 + random negatives) x mean trigrams per document) are
    fewer than the trigram table's rows (titles, names), dense otherwise (long text). A fine-tuned encoder's
    AdamW takes dense gradients only."""
    mode = str(tcfg.embedding_gradients)
    if mode not in GRADIENTS:
        raise ValueError(f"train.embedding_gradients must be one of {GRADIENTS}, got {mode!r}")
    if v.text == "finetune" or mode == "dense":
        return False
    bags = features.doc_fields.get("text_trigrams")
    if mode == "sparse" or not isinstance(bags, Bags) or not len(bags):
        return mode == "sparse"
    entries = int(tcfg.batch_size) * (1 + int(tcfg.random_negatives)) * len(bags.ids) / len(bags)
    return entries < features.sizes["text_trigrams"]


def train_tower(
    cfg: DictConfig,
    features: FeatureSet,
    name: str,
    out_dir: Path,
    init_from: Path | None = None,
    mined: pd.DataFrame | None = None,
    triplets: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    shards: Shards = SERIAL,
) -> TrainedTower:
    """Train model `name` on the training sessions; checkpoints and CSV logs under `out_dir`.

    init_from: a checkpoint whose parameters of matching name and shape initialise the model (transfer
    learning). mined: optional (session_id, doc_id) negatives added to the random ones (train.mined_negatives
    per positive). triplets: (positives, negatives) of a validated mined round (ebr/mining/rounds.py), used
    as they are, instead of the logged positives and per-batch random negatives (ebr/models/mined_data.py).
    shards: where the training's progress goes."""
    tcfg = train_settings(cfg, variant(cfg, name))
    if tcfg.torch_threads:
        torch.set_num_threads(int(tcfg.torch_threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module, notes = build_module(cfg, features, name)
    out_dir = Path(out_dir)
    if not variant(cfg, name).trains:
        return _untrained(module, name, out_dir, notes)
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
            validation_pairs=int(tcfg.validation_pairs),
        )
    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0, enable_version_counter=False
    )
    steps = training_steps(tcfg, data.n_pairs)
    trainer: L.Trainer = instantiate(  # train.trainer: Lightning's Trainer as configured
        tcfg.trainer,
        max_steps=steps,
        max_epochs=-1,
        logger=_logger(str(tcfg.logger), out_dir),
        callbacks=[checkpoints, TrainingProgress(f"train {name}", shards)],
        default_root_dir=out_dir,
    )
    module.label = name
    start = time.perf_counter()
    with warnings.catch_warnings():  # no validation slice (a mined round's data, validation_pairs=0): no loop
        warnings.filterwarnings("ignore", "You defined a `validation_step` but have no `val_dataloader`")
        warnings.filterwarnings("ignore", "Total length of `list` across ranks is zero")
        trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    v = variant(cfg, name)
    stats = {
        "model": name,
        "tower": v.tower,
        "text": v.text,
        "hard_negatives": module.hparams.hard_negatives,
        "positives": data.n_pairs,
        "steps": int(trainer.global_step),
        "epochs": round(trainer.global_step / _steps_per_epoch(tcfg, data.n_pairs), 2),
        "seconds": round(seconds, 2),
        "pairs_per_s": round(module.pairs_seen / seconds, 1),
        "triplets_per_s": round(module.triplets_seen / seconds, 1),
        "final_loss": float(trainer.callback_metrics.get("train/loss_epoch", float("nan"))),
        "validation_pairs": len(data.validation.session_rows) if isinstance(data, TripletDataModule) else 0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(module.device),
        "processes": trainer.world_size,  # > 1 with DDP: pairs_seen counts this process's share only
        "parameters": sum(p.numel() for p in module.parameters()),
        "transferred_parameters": transferred,
        "notes": notes,
        **module.history,  # per epoch: epoch_loss, epoch_val_loss, epoch_val_recall@10 (the loss picture)
    }
    if torch.cuda.is_available():
        stats["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    log.info("trained %s: %s", name, stats)
    # the path rank 0 wrote (with ddp_spawn this process's callback never saw the save)
    last = out_dir / "checkpoints" / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    if not last.is_file():
        raise FileNotFoundError(f"training {name}: no checkpoint at {last}")
    return TrainedTower(name, last, stats)


def _steps_per_epoch(tcfg: DictConfig, n_pairs: int) -> int:
    devices, nodes = tcfg.trainer.devices, int(tcfg.trainer.num_nodes)
    processes = int(devices) * nodes if str(devices).isdigit() else 1
    return max(math.ceil(n_pairs / (int(tcfg.batch_size) * processes)), 1)


def training_steps(tcfg: DictConfig, n_pairs: int) -> int:
    """The optimizer steps of a training: `train.steps`, else `train.epochs` passes over the positives but at
    least `train.min_steps` (a log of 800 queries would otherwise train for a dozen steps)."""
    if tcfg.steps is not None:
        if int(tcfg.steps) < 1:
            raise ValueError(f"train.steps must be >= 1, got {tcfg.steps}")
        return int(tcfg.steps)
    return max(int(tcfg.epochs) * _steps_per_epoch(tcfg, n_pairs), int(tcfg.min_steps))


def _untrained(module: TwoTowerModule, name: str, out_dir: Path, notes: list[str]) -> TrainedTower:
    """A variant without training (a frozen pretrained tower): its checkpoint as Lightning writes one."""
    last = out_dir / "checkpoints" / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    last.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    torch.save(checkpoint, last)
    stats = {"model": name, "steps": 0, "seconds": 0.0, "parameters": 0, "notes": [*notes, "not trained"]}
    log.info("%s: a frozen pretrained encoder, not trained", name)
    return TrainedTower(name, last, stats)


class TrainingProgress(L.Callback):
    """Reports the share of optimizer steps done to `shards.report` every `every` steps and at the end."""

    def __init__(self, what: str, shards: Shards, every: int = 50) -> None:
        self.what, self.shards, self.every = what, shards, every

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step % self.every == 0:
            self.shards.report(self.what, trainer.global_step / max(trainer.estimated_stepping_batches, 1))

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.shards.report(self.what, 1.0)


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


def export_trained(
    checkpoint: Path, features: FeatureSet, out: Path, name: str, shards: Shards = SERIAL
) -> dict[str, Any]:
    """A trained model's query tower under out/towers/<name>/ and its document embeddings under
    out/embeddings/<name>.npy; returns their paths and the checkpoint's."""
    module = load_module(checkpoint)
    tower = export_query_tower(
        module.query_tower, features.featurizer, out / "towers" / name, dict(module.hparams)
    )
    embeddings = out / "embeddings" / f"{name}.npy"
    embeddings.parent.mkdir(parents=True, exist_ok=True)
    np.save(embeddings, embed_documents(module, features, shards=shards))
    return {"checkpoint": str(checkpoint), "tower": str(tower), "embeddings": str(embeddings)}


def load_module(checkpoint: Path) -> TwoTowerModule:
    """A trained module from its checkpoint, on CPU, in eval mode."""
    return TwoTowerModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()


def embed_documents(
    module: TwoTowerModule, features: FeatureSet, batch_size: int = 4096, shards: Shards = SERIAL
) -> np.ndarray:
    """float32 L2-normalised embeddings of every document (rows in features.doc_ids order), in shards."""
    return encode_in_shards(module.document_tower, features.doc_fields, batch_size, shards)


def embed_queries(
    module: TwoTowerModule,
    features: FeatureSet,
    session_rows: np.ndarray,
    batch_size: int = 4096,
    shards: Shards = SERIAL,
) -> np.ndarray:
    """float32 L2-normalised query embeddings of the given session rows, in shards."""
    fields = take(
        {f.name: features.session_fields[f.name] for f in module.query_tower.spec.fields}, session_rows
    )
    return encode_in_shards(module.query_tower, fields, batch_size, shards)


def encode_in_shards(
    tower: Tower, fields: Fields, batch_size: int = 4096, shards: Shards = SERIAL
) -> np.ndarray:
    """`encode` mapped over shards of rows on `shards` (ebr/runners.py), rows in order."""
    columns = {f.name: fields[f.name] for f in tower.spec.fields}
    parts = shards.map(
        partial(_encode_rows, tower, columns, batch_size), shards.rows(n_rows(columns)), "inference"
    )
    return np.concatenate(parts) if parts else np.zeros((0, tower.spec.output_dim), np.float32)


def _encode_rows(tower: Tower, fields: Fields, batch_size: int, rows: slice) -> np.ndarray:
    return encode(tower, take(fields, np.arange(rows.start, rows.stop)), batch_size)
