"""Lightning training of a query tower and a document tower with the triplet loss, random negatives and
optional online in-batch hard negatives; with a validation slice (ebr/models/datamodule.py), the validation
triplet loss and in-batch recall@10 per epoch."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from ebr.models.losses import triplet_loss
from ebr.models.miners import hardest_in_batch
from ebr.models.pretrained import PretrainedText
from ebr.models.specs import TowerSpec
from ebr.models.towers import TwoTower

log = logging.getLogger(__name__)
VALIDATION_K = 10  # val/recall@10: the share of validation queries whose positive is in the in-batch top 10
RECALL_KEY = f"epoch_val_recall@{VALIDATION_K}"


class TwoTowerModule(L.LightningModule):
    def __init__(
        self,
        query_spec: dict[str, Any],
        document_spec: dict[str, Any],
        share: bool,
        margin: float,
        hard_negatives: int,
        lr: float,
        encoder_lr: float = 2e-5,
        head_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TwoTower(TowerSpec.from_dict(query_spec), TowerSpec.from_dict(document_spec), share)
        self.triplets_seen = 0
        self.pairs_seen = 0
        self.history: dict[str, list[float]] = {
            "epoch_loss": [],
            "epoch_val_loss": [],
            RECALL_KEY: [],
        }
        self._sums: dict[str, tuple[torch.Tensor | float, int]] = {}
        self.label = "model"  # the model's name in log lines (train_tower sets it)

    @property
    def query_tower(self) -> torch.nn.Module:
        return self.model.query_tower

    @property
    def document_tower(self) -> torch.nn.Module:
        return self.model.document_tower

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, query, positive, mask = self._loss(batch)
        self.triplets_seen += int(mask.sum())
        self.pairs_seen += len(query)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(query))
        self._add("loss", loss.detach(), len(query))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, query, positive, _ = self._loss(batch)
        scores = query @ positive.T
        own = scores.diagonal().unsqueeze(1)
        # rivals: the batch's other positives of the same vertical (a duplicate positive is no rival)
        rivals = (batch["groups"][None, :] == batch["groups"][:, None]) & (
            batch["positive_ids"][None, :] != batch["positive_ids"][:, None]
        )
        recall = ((rivals & (scores > own)).sum(dim=1) < VALIDATION_K).float().mean()
        size = len(query)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.log(f"val/recall@{VALIDATION_K}", recall, on_epoch=True, batch_size=size, sync_dist=True)
        if not self.trainer.sanity_checking:
            self._add("val_loss", loss, size)
            self._add("val_recall", recall, size)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._close("val_loss", "epoch_val_loss")
            self._close("val_recall", RECALL_KEY)

    def on_train_epoch_end(self) -> None:
        self._close("loss", "epoch_loss")
        epoch, h = len(self.history["epoch_loss"]), self.history
        val = h["epoch_val_loss"][-1:] if len(h["epoch_val_loss"]) == epoch else []
        log.info(
            "%s epoch %d: train loss %.4f%s", self.label, epoch, h["epoch_loss"][-1],
            f", validation loss {val[0]:.4f}, recall@{VALIDATION_K} {h[RECALL_KEY][-1]:.4f}" if val else "",
        )  # fmt: skip

    def _add(self, name: str, value: torch.Tensor, weight: int) -> None:
        """Adds a batch's value to the epoch's sums (a tensor: no device sync per step)."""
        total, count = self._sums.get(name, (0.0, 0))
        self._sums[name] = (total + value * weight, count + weight)

    def _close(self, name: str, key: str) -> None:
        """The mean of `name` over the epoch's batches (weighted by batch size) appended to history[key]."""
        total, count = self._sums.pop(name, (0.0, 0))
        if count:
            self.history[key].append(round(float(total) / count, 5))

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(triplet loss, query embeddings, positive embeddings, valid-negatives mask) of a batch."""
        query = self.model.query_tower(batch["query"])
        positive = self.model.document_tower(batch["positive"])
        mask = batch["negative_mask"]
        size, n_random = mask.shape
        negatives = self.model.document_tower(batch["negatives"]).view(size, n_random, -1)
        k = self.hparams.hard_negatives
        if k > 0:
            hard, valid = hardest_in_batch(query, positive, k, batch["positive_ids"], batch["groups"])
            negatives = torch.cat([negatives, positive[hard]], dim=1)
            mask = torch.cat([mask, valid], dim=1)
        return triplet_loss(query, positive, negatives, self.hparams.margin, mask), query, positive, mask

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adagrad (lr) for the towers trained from scratch; with a fine-tuned pretrained encoder, AdamW with
        the encoder's parameters at encoder_lr and the others at head_lr (a transformer needs small steps)."""
        encoder = {id(p) for m in self.modules() if isinstance(m, PretrainedText) for p in m.parameters()}
        if not encoder:
            return torch.optim.Adagrad(self.parameters(), lr=self.hparams.lr)
        params = list(dict.fromkeys(self.parameters()))  # shared towers list their parameters once
        groups = [
            {"params": [p for p in params if id(p) in encoder], "lr": self.hparams.encoder_lr},
            {"params": [p for p in params if id(p) not in encoder], "lr": self.hparams.head_lr},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
