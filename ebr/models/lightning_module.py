"""Lightning training of a query tower and a document tower with the triplet loss, random negatives and
optional online in-batch hard negatives."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ebr.models.losses import triplet_loss
from ebr.models.miners import hardest_in_batch
from ebr.models.pretrained import PretrainedText
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
        encoder_lr: float = 2e-5,
        head_lr: float = 1e-3,
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
