"""Towers: feature embeddings -> concatenation -> MLP -> d dimensions -> L2 normalisation.

The text tower reads text features only; the unified tower adds location, social and context features.
Query and document towers are separate networks by default; `share` makes the text tower one network for
both sides, and makes the unified towers share their text embedding tables.

A text field may come from a pretrained sentence encoder (ebr/models/pretrained.py): `text_pretrained`, its
frozen embeddings as a dense feature, or `text_raw`, the raw texts encoded inside the tower (fine-tuned). A
tower with a `passthrough` field outputs that field's embedding as it is (the pretrained text tower).
Embedding tables have sparse or dense gradients (`TowerSpec.sparse`, chosen by train.embedding_gradients):
short texts touch a small part of a table per batch (sparse steps are cheaper), long documents touch more
(token, dimension) entries than the table holds (dense steps are cheaper; docs/models.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ebr.models.fields import n_rows, take, to_tensors
from ebr.models.specs import BAG, CAT, DENSE, TEXT, FieldSpec, TowerSpec


def _encoder(spec: FieldSpec) -> nn.Module:
    from ebr.models.pretrained import PretrainedRef, PretrainedText  # sentence-transformers: an extra

    if spec.encoder is None:
        raise ValueError(f"text field {spec.name!r} names no pretrained encoder")
    return PretrainedText(PretrainedRef.from_dict(spec.encoder), trainable=True)


def _mlp(width: int, hidden_dims: Sequence[int], output_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """One side's encoder: feature embeddings -> concatenation -> MLP -> output_dim -> L2 normalisation.

    Bags use nn.EmbeddingBag(mode="sum") with per-sample weights; categorical fields nn.Embedding (id 0 =
    out of vocabulary); dense fields a linear projection. The output concatenates the groups' sub-towers (an
    MLP over the group's fields each) and an MLP over all fields (free_dim outputs). With `shared`, the
    groups' embedding tables and sub-towers are those of another tower (the two sides are then siamese on
    the groups' fields: identical inputs give identical group outputs)."""

    def __init__(self, spec: TowerSpec, shared: Tower | None = None) -> None:
        super().__init__()
        if spec.free_dim < 0:
            raise ValueError(f"group dims exceed output_dim={spec.output_dim}")
        self.spec = spec
        if spec.passthrough is not None:
            self.tables = nn.ModuleDict()
            self.groups = nn.ModuleDict()
            passed = next(f for f in spec.fields if f.name == spec.passthrough)
            if passed.kind == TEXT:
                self.tables[passed.name] = shared.tables[passed.name] if shared else _encoder(passed)
            return
        dim = spec.embedding_dim
        names = {f.name for f in spec.fields}
        grouped = {n for g in spec.groups for n in g.fields}
        if not grouped <= names:
            raise ValueError(f"group fields {sorted(grouped - names)} are not fields of the tower")
        self.tables = nn.ModuleDict()
        for f in spec.fields:
            if f.table is not None:
                continue
            if shared is not None and f.name in grouped:
                self.tables[f.name] = shared.tables[f.name]
            elif f.kind == BAG:
                self.tables[f.name] = nn.EmbeddingBag(f.size, dim, mode="sum", sparse=spec.sparse)
                nn.init.normal_(self.tables[f.name].weight, std=0.1)
            elif f.kind == CAT:
                self.tables[f.name] = nn.Embedding(f.size, dim, sparse=spec.sparse)
                nn.init.normal_(self.tables[f.name].weight, std=0.1)
            elif f.kind == DENSE:
                self.tables[f.name] = nn.Linear(f.size, dim)
            elif f.kind == TEXT:  # the encoder's output is the field's embedding (its own width)
                self.tables[f.name] = _encoder(f)
            else:
                raise ValueError(f"field {f.name}: unknown kind {f.kind!r}")
        width = {f.name: f.size if f.kind == TEXT else dim for f in spec.fields}
        self.groups = nn.ModuleDict(
            {
                g.name: shared.groups[g.name]
                if shared
                else _mlp(sum(width[n] for n in g.fields), spec.hidden_dims, g.dim)
                for g in spec.groups
            }
        )
        if spec.free_dim:
            self.mlp = _mlp(sum(width.values()), spec.hidden_dims, spec.free_dim)

    def forward(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        if self.spec.passthrough is not None:
            x = inputs[self.spec.passthrough]
            return F.normalize(self.tables[self.spec.passthrough](x) if self.tables else x, dim=1)
        parts = {}
        for f in self.spec.fields:
            table = self.tables[f.table or f.name]
            x = inputs[f.name]
            if f.kind == BAG:
                ids, offsets, weights = x
                parts[f.name] = table(ids, offsets, per_sample_weights=weights)
            else:
                parts[f.name] = table(x)
        outputs = [
            self.groups[g.name](torch.cat([parts[n] for n in g.fields], dim=1)) for g in self.spec.groups
        ]
        if self.spec.free_dim:
            outputs.append(self.mlp(torch.cat(list(parts.values()), dim=1)))
        return F.normalize(torch.cat(outputs, dim=1), dim=1)


class TwoTower(nn.Module):
    """Query and document towers; similarity is the cosine of their outputs (a dot product).

    Separate networks unless `share`: then identical specs make one network for both sides, and different
    specs share the groups' embedding tables and sub-towers."""

    def __init__(self, query: TowerSpec, document: TowerSpec, share: bool) -> None:
        super().__init__()
        self.query_tower = Tower(query)
        if share and query == document:
            self.document_tower = self.query_tower
        else:
            self.document_tower = Tower(document, self.query_tower if share else None)


@torch.no_grad()
def encode(tower: Tower, fields: Mapping[str, Any], batch_size: int = 4096) -> np.ndarray:
    """float32 L2-normalised embeddings of every row of `fields` (the tower's fields only), in batches."""
    columns = {f.name: fields[f.name] for f in tower.spec.fields}
    total = n_rows(columns)
    device = next(tower.parameters(), torch.zeros(0)).device
    encoders = [f.encoder for f in tower.spec.fields if f.kind == TEXT and f.encoder]
    if encoders:  # a transformer in the tower: its own batch size bounds the activations
        batch_size = min(batch_size, int(encoders[0]["batch_size"]))
    was_training = tower.training
    tower.eval()
    out = np.zeros((total, tower.spec.output_dim), np.float32)
    for start in range(0, total, batch_size):
        rows = np.arange(start, min(start + batch_size, total))
        inputs = _to_device(to_tensors(take(columns, rows)), device)
        out[rows] = tower(inputs).float().cpu().numpy()
    tower.train(was_training)
    return out


def _to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors (and bag triples) moved to `device`; texts (lists of str) stay as they are."""
    return {
        k: tuple(t.to(device) for t in v)
        if isinstance(v, tuple)
        else v
        if isinstance(v, list)
        else v.to(device)
        for k, v in inputs.items()
    }
