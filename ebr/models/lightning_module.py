"""Lightning training of a query tower and a document tower with the triplet loss, random negatives and
optional online in-batch hard negatives."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ebr.models.losses import triplet_loss
from ebr.models.miners import hardest_in_batch
from ebr.models.towers import TowerSpec, TwoTower


class TwoTowerModule(L.LightningModule):
    def __init__(
        self,
        query_spec: dict[str, Any],
        document_spec: dict[str, Any],
        share: bool,
        margin: float,
        hard_negatives: int,
        lr: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TwoTower(TowerSpec.from_dict(query_spec), TowerSpec.from_dict(document_spec), share)
        self.triplets_seen = 0
        self.pairs_seen = 0

    @property
    def query_tower(self) -> torch.nn.Module:
        return self.model.query_tower

    @property
    def document_tower(self) -> torch.nn.Module:
        return self.model.document_tower

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
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
        loss = triplet_loss(query, positive, negatives, self.hparams.margin, mask)
        self.triplets_seen += int(mask.sum())
        self.pairs_seen += size
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Adagrad handles the sparse gradients of the embedding tables and the dense ones of the MLP alike
        return torch.optim.Adagrad(self.parameters(), lr=self.hparams.lr)
