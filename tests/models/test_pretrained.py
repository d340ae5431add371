"""The pretrained sentence encoder (the [pretrained] extra: all-MiniLM-L6-v2 from a PyPI package, offline):
checksum verification, one-line errors, frozen and fine-tuned towers exported and served from their folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from tiny_logs import FAST

from ebr.config import load_config
from ebr.models.export import QueryInput, export_query_tower, load_query_encoder
from ebr.models.features import FeatureSet, build_features, split_from_config
from ebr.models.pretrained import FrozenEncoder, PretrainedModelError, PretrainedRef, resolve, verified_folder
from ebr.models.training import embed_queries, load_module, train_tower

STEPS = [
    *FAST,
    "train.variants.pretrained_ft.train.batch_size=16",
    "train.variants.pretrained_ft.train.steps=3",
]


@pytest.fixture(scope="module")
def cfg() -> DictConfig:
    return load_config(STEPS)


@pytest.fixture(scope="module")
def ref(cfg: DictConfig) -> PretrainedRef:
    return PretrainedRef.from_dict(dict(cfg.features.pretrained))


def test_the_packaged_model_loads_offline_and_encodes(ref: PretrainedRef) -> None:
    encoder = FrozenEncoder(ref)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    vectors = encoder.encode(["a man plays the guitar", "someone is playing guitar", "stock markets fell"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3  # paraphrases closer than unrelated


def test_a_wrong_folder_or_checksum_is_one_line_naming_the_path(tmp_path: Path, ref: PretrainedRef) -> None:
    missing = PretrainedRef(str(tmp_path / "nowhere"), ref.sha256)
    with pytest.raises(PretrainedModelError, match=f"{tmp_path / 'nowhere'}: no such model folder") as err:
        verified_folder(missing)
    assert "\n" not in str(err.value)
    copy = tmp_path / "model"
    shutil.copytree(resolve(ref.model), copy)
    with pytest.raises(
        PretrainedModelError, match=r"model.safetensors: sha256 \w+ is not the configured 00"
    ) as e:
        verified_folder(PretrainedRef(str(copy), "00" * 32))
    assert str(copy) in str(e.value) and "features.pretrained.sha256" in str(e.value)
    (copy / "modules.json").unlink()
    with pytest.raises(PretrainedModelError, match="not a sentence-transformers model folder"):
        verified_folder(PretrainedRef(str(copy), ref.sha256))
    with pytest.raises(PretrainedModelError, match="package 'no_such_pkg' is not installed"):
        resolve("package:no_such_pkg")


def _features(tiny_db: Path, cfg: DictConfig, uses: set[str]) -> FeatureSet:
    return build_features(tiny_db, cfg, split_from_config(tiny_db, cfg), pretrained_uses=uses)


def test_frozen_tower_is_the_encoder_and_serves_from_its_folder(
    tmp_path: Path, tiny_db: Path, cfg: DictConfig, ref: PretrainedRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EBR_HOME", str(tmp_path / "home"))
    features = _features(tiny_db, cfg, {"frozen"})
    assert features.doc_fields["text_pretrained"].shape == (len(features.doc_ids), 384)
    assert (tmp_path / "home" / "cache" / "pretrained").is_dir()  # the encodings are kept for the next run
    trained = train_tower(cfg, features, "pretrained", tmp_path / "pretrained")
    assert trained.stats["steps"] == 0 and "not trained" in trained.stats["notes"]
    module = load_module(trained.checkpoint)
    folder = export_query_tower(module.query_tower, features.featurizer, tmp_path / "towers" / "pretrained")
    assert (folder / "pretrained.json").is_file()
    served = load_query_encoder(folder).encode([QueryInput("john smith"), QueryInput("chess club")])
    np.testing.assert_allclose(served, FrozenEncoder(ref).encode(["john smith", "chess club"]), atol=1e-5)


def test_finetuned_tower_trains_and_its_export_carries_the_weights(
    tmp_path: Path, tiny_db: Path, cfg: DictConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EBR_HOME", str(tmp_path / "home"))
    features = _features(tiny_db, cfg, {"finetune"})
    trained = train_tower(cfg, features, "pretrained_ft", tmp_path / "ft")
    assert trained.stats["steps"] == 3 and trained.stats["text"] == "finetune"
    module = load_module(trained.checkpoint)
    before = FrozenEncoder(PretrainedRef.from_dict(dict(cfg.features.pretrained))).encode(["john smith"])
    folder = export_query_tower(module.query_tower, features.featurizer, tmp_path / "towers" / "ft")
    encoder = load_query_encoder(folder)
    rows = features.part_rows("evaluate")[:8]
    inputs = [QueryInput(str(features.session_queries[r])) for r in rows]
    expected = embed_queries(module, features, rows)
    np.testing.assert_allclose(encoder.encode(inputs), expected, atol=1e-5)  # what training encoded
    moved = encoder.encode([QueryInput("john smith")])
    assert not np.allclose(moved, before, atol=1e-4)  # fine-tuning changed the encoder
