"""Export of a trained query tower as a self-contained folder, and the serving-side encoder that loads it.

A folder `towers/<key>/` holds:
  config.json   format version, the tower spec (fields, sizes, dimensions) and the training hyperparameters
  weights.npz   the query tower's state_dict as numpy arrays (format 2; format 1 folders hold weights.pt)
  hashing.json  text hashing parameters (buckets, seed)
  vocabs.json   city / region / country / language vocabularies (id = position + 1, 0 = OOV)
  users.npz     per-user lookups: user ids, home city ids, social vectors, social-cluster bags

`load_query_encoder(path)` needs only this folder: no DuckDB, no training data, and no torch unless the tower
holds a text encoder (a fine-tuned pretrained model): its forward pass (embedding bags, embeddings, linear
layers, ReLU, L2 normalisation) runs in numpy, so that `ebr search` starts without importing torch
(docs/benchmarks.md#ebr-search-cold-start).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ebr.models.ensembles import l2_normalize  # F.normalize(x, dim=1): zero rows stay zero
from ebr.models.fields import Bags, Fields
from ebr.models.query_features import QueryFeaturizer, QueryInput
from ebr.models.specs import BAG, CAT, TEXT, TowerSpec

if TYPE_CHECKING:
    from ebr.models.towers import Tower

FORMAT_VERSION = 2
WEIGHTS = {1: "weights.pt", 2: "weights.npz"}

__all__ = ["QueryEncoder", "QueryInput", "export_query_tower", "load_query_encoder"]


class QueryEncoder:
    """Encodes QueryInputs into float32 L2-normalised rows, exactly as the training-time query tower: in numpy
    from the tower's weights, or with the torch tower (`torch_tower`) when it holds a text encoder."""

    def __init__(
        self,
        spec: TowerSpec,
        weights: Mapping[str, np.ndarray],
        featurizer: QueryFeaturizer,
        torch_tower: Tower | None = None,
    ) -> None:
        self.spec = spec
        self.weights = weights
        self.featurizer = featurizer
        self.torch_tower = torch_tower

    @property
    def dim(self) -> int:
        return self.spec.output_dim

    def encode(self, queries: Sequence[QueryInput]) -> np.ndarray:
        if not queries:
            return np.zeros((0, self.dim), np.float32)
        fields = self.featurizer.featurize_inputs(queries)
        if self.torch_tower is not None:
            from ebr.models.towers import encode

            return encode(self.torch_tower, fields)
        return forward(self.spec, self.weights, fields)


def forward(spec: TowerSpec, weights: Mapping[str, np.ndarray], fields: Fields) -> np.ndarray:
    """`ebr.models.towers.Tower.forward` in numpy (float32) for a tower without a text encoder: `weights` is
    its state_dict, `fields` the feature columns (tested equal to the torch tower in tests/models)."""
    if spec.passthrough is not None:
        return l2_normalize(np.asarray(fields[spec.passthrough], np.float32))
    parts: dict[str, np.ndarray] = {}
    for f in spec.fields:
        table, x = f"tables.{f.table or f.name}", fields[f.name]
        if f.kind == BAG:
            assert isinstance(x, Bags)
            parts[f.name] = _bag_sum(weights[f"{table}.weight"], x)
        elif f.kind == CAT:
            parts[f.name] = weights[f"{table}.weight"][np.asarray(x)]
        else:  # dense: a linear projection
            parts[f.name] = _linear(np.asarray(x, np.float32), weights, table)
    layers = len(spec.hidden_dims) + 1
    outputs = [
        _mlp(np.concatenate([parts[n] for n in g.fields], axis=1), weights, f"groups.{g.name}", layers)
        for g in spec.groups
    ]
    if spec.free_dim:
        outputs.append(_mlp(np.concatenate(list(parts.values()), axis=1), weights, "mlp", layers))
    return l2_normalize(np.concatenate(outputs, axis=1))


def _bag_sum(table: np.ndarray, bags: Bags) -> np.ndarray:
    """nn.EmbeddingBag(mode="sum") with per-sample weights."""
    out = np.zeros((len(bags), table.shape[1]), np.float32)
    rows = np.repeat(np.arange(len(bags)), np.diff(bags.indptr))
    np.add.at(out, rows, table[bags.ids] * bags.weights[:, None])
    return out


def _linear(x: np.ndarray, weights: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def _mlp(x: np.ndarray, weights: Mapping[str, np.ndarray], name: str, layers: int) -> np.ndarray:
    """`ebr.models.towers._mlp`: Linear layers at even positions of the Sequential, ReLU between them."""
    for i in range(layers):
        x = _linear(x, weights, f"{name}.{2 * i}")
        if i < layers - 1:
            x = np.maximum(x, 0)
    return x


def export_query_tower(
    tower: Tower, featurizer: QueryFeaturizer, out_dir: Path, hyperparameters: dict | None = None
) -> Path:
    """Write the query tower folder at `out_dir` (built under a temporary name, then renamed into place)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        config = {
            "format_version": FORMAT_VERSION,
            "tower": tower.spec.to_dict(),
            "hyperparameters": hyperparameters or {},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().cpu().numpy() for k, v in tower.state_dict().items()}
        np.savez(tmp / WEIGHTS[FORMAT_VERSION], **state)
        featurizer.save(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_query_encoder(path: Path) -> QueryEncoder:
    """The encoder of an exported query tower folder (CPU; torch only for a tower with a text encoder, or to
    read a format 1 folder's weights.pt)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not an exported query tower (no config.json)")
    config = json.loads(config_file.read_text())
    version = config.get("format_version")
    if version not in WEIGHTS:
        raise ValueError(f"{config_file}: format_version {version} is not one of {sorted(WEIGHTS)}")
    spec = TowerSpec.from_dict(config["tower"])
    weights_file = path / WEIGHTS[version]
    if version == 1:
        import torch

        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        weights = {k: v.numpy() for k, v in state.items()}
    else:
        with np.load(weights_file) as z:
            weights = {k: z[k] for k in z.files}
    featurizer = QueryFeaturizer.load(path)
    if not any(f.kind == TEXT for f in spec.fields):
        return QueryEncoder(spec, weights, featurizer)
    import torch

    from ebr.models.towers import Tower

    tower = Tower(spec)
    tower.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return QueryEncoder(spec, {}, featurizer, tower.eval())
