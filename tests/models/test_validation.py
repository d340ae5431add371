"""The validation slice of training: whole training sessions kept out, a loss and recall@10 per epoch in the
training summary and the log."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from ebr.models.datamodule import TrainingPairs, training_pairs, validation_split
from ebr.models.features import FeatureSet
from ebr.models.training import train_tower


def test_validation_split_takes_whole_sessions_within_its_budget() -> None:
    pairs = TrainingPairs(np.repeat(np.arange(40), 3), np.arange(120))
    train, val = validation_split(pairs, 9, seed=3)
    assert len(val.session_rows) == 9  # three whole sessions of 3 pairs
    assert not set(train.session_rows) & set(val.session_rows)
    assert sorted(np.concatenate([train.doc_rows, val.doc_rows])) == list(range(120))
    assert validation_split(pairs, 9, seed=3)[1].doc_rows.tolist() == val.doc_rows.tolist()  # seeded
    assert len(validation_split(pairs, 1000, seed=3)[1].session_rows) == 12  # at most a tenth of the pairs
    assert len(validation_split(pairs, 0, seed=3)[1].session_rows) == 0


def test_training_summary_has_a_validation_metric_per_epoch(
    fast_cfg: DictConfig, tiny_features: FeatureSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = fast_cfg.copy()
    cfg.train.steps, cfg.train.validation_pairs = None, 40
    cfg.train.epochs, cfg.train.min_steps = 3, 0
    with caplog.at_level(logging.INFO, logger="ebr"):
        stats = train_tower(cfg, tiny_features, "text", tmp_path).stats
    pairs = len(training_pairs(tiny_features, "clicks").session_rows)
    assert 0 < stats["validation_pairs"] <= 40 and stats["positives"] == pairs - stats["validation_pairs"]
    assert len(stats["epoch_loss"]) == len(stats["epoch_val_loss"]) == len(stats["epoch_val_recall@10"]) == 3
    assert all(math.isfinite(v) and v >= 0 for v in stats["epoch_loss"] + stats["epoch_val_loss"])
    assert all(0 <= r <= 1 for r in stats["epoch_val_recall@10"])
    assert stats["epoch_val_loss"][-1] < stats["epoch_val_loss"][0]  # it learns something that generalises
    lines = [r.getMessage() for r in caplog.records if r.name == "ebr.models.lightning_module"]
    assert len(lines) == 3 and lines[-1].startswith("text epoch 3: train loss")
    assert "validation loss" in lines[-1]


def test_tensorboard_logger_writes_the_validation_scalars(
    fast_cfg: DictConfig, tiny_features: FeatureSet, tmp_path: Path
) -> None:
    """train.logger=tensorboard (the [tensorboard] extra): an event file with train and validation scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = fast_cfg.copy()
    cfg.train.logger, cfg.train.epochs, cfg.train.validation_pairs = "tensorboard", 2, 40
    train_tower(cfg, tiny_features, "text", tmp_path)
    (events,) = (tmp_path / "logs").rglob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"train/loss_epoch", "val/loss", "val/recall@10"} <= set(scalars)
    assert len(EventAccumulator(str(events)).Reload().Scalars("val/loss")) == 2


def test_no_validation_slice_trains_without_validation(
    fast_cfg: DictConfig, tiny_features: FeatureSet, tmp_path: Path
) -> None:
    cfg = fast_cfg.copy()
    cfg.train.validation_pairs, cfg.train.epochs = 0, 1
    stats = train_tower(cfg, tiny_features, "text", tmp_path).stats
    assert stats["validation_pairs"] == 0 and stats["epoch_val_loss"] == [] and len(stats["epoch_loss"]) == 1
    assert stats["positives"] == len(training_pairs(tiny_features, "clicks").session_rows)
