"""Export of a trained query tower as a self-contained folder, and the serving-side encoder that loads it.

A folder `towers/<key>/` holds:
  config.json   format version, the tower spec (fields, sizes, dimensions) and the training hyperparameters
  weights.pt    the query tower's state_dict (loaded with weights_only=True)
  hashing.json  text hashing parameters (buckets, seed)
  vocabs.json   city / region / country / language vocabularies (id = position + 1, 0 = OOV)
  users.npz     per-user lookups: user ids, home city ids, social vectors, social-cluster bags

`load_query_encoder(path)` needs only this folder: no DuckDB, no training data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ebr.models.query_features import QueryFeaturizer, QueryInput
from ebr.models.towers import Tower, TowerSpec, encode

FORMAT_VERSION = 1

__all__ = ["QueryEncoder", "QueryInput", "export_query_tower", "load_query_encoder"]


class QueryEncoder:
    """Encodes QueryInputs into float32 L2-normalised rows, exactly as the training-time query tower."""

    def __init__(self, tower: Tower, featurizer: QueryFeaturizer) -> None:
        self.tower = tower.eval()
        self.featurizer = featurizer

    @property
    def dim(self) -> int:
        return self.tower.spec.output_dim

    def encode(self, queries: Sequence[QueryInput], batch_size: int = 4096) -> np.ndarray:
        if not queries:
            return np.zeros((0, self.dim), np.float32)
        return encode(self.tower, self.featurizer.featurize_inputs(queries), batch_size)


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
        state = {k: v.detach().cpu() for k, v in tower.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
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
    """The encoder of an exported query tower folder (CPU)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not an exported query tower (no config.json)")
    config = json.loads(config_file.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_file}: format_version {config.get('format_version')} != {FORMAT_VERSION}")
    tower = Tower(TowerSpec.from_dict(config["tower"]))
    tower.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    return QueryEncoder(tower, QueryFeaturizer.load(path))
