"""Checkpoint and export round trips: identical embeddings, and an exported query tower that runs alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from ebr.models.export import QueryInput, export_query_tower, load_query_encoder
from ebr.models.features import FeatureSet
from ebr.models.training import TrainedTower, embed_documents, embed_queries, load_module


def _heldout_inputs(features: FeatureSet, rows: np.ndarray, tables: dict) -> list[QueryInput]:
    sessions = tables["sessions"].set_index("session_id").loc[features.session_ids[rows]]
    return [
        QueryInput(r.query, int(r.user_id), r.city, r.region, r.country, r.language)
        for r in sessions.itertuples()
    ]


def test_checkpoint_round_trip_gives_identical_embeddings(
    trained_unified: TrainedTower, tiny_features: FeatureSet
) -> None:
    a, b = load_module(trained_unified.checkpoint), load_module(trained_unified.checkpoint)
    docs = embed_documents(a, tiny_features)
    assert docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(docs, embed_documents(b, tiny_features))


def test_exported_encoder_matches_training_tower(
    tmp_path: Path, trained_unified: TrainedTower, tiny_features: FeatureSet, tiny_tables_: dict
) -> None:
    module = load_module(trained_unified.checkpoint)
    folder = export_query_tower(module.query_tower, tiny_features.featurizer, tmp_path / "towers" / "unified")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "hashing.json",
        "idf.npz",
        "users.npz",
        "vocabs.json",
        "weights.npz",
    ]
    rows = np.flatnonzero(tiny_features.heldout)[:50]
    expected = embed_queries(module, tiny_features, rows)
    encoder = load_query_encoder(folder)
    got = encoder.encode(_heldout_inputs(tiny_features, rows, tiny_tables_))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # anonymous searcher, unseen context: still a unit vector
    other = encoder.encode([QueryInput("jon smth", None, "atlantis", None, None, "klingon")])
    np.testing.assert_allclose(np.linalg.norm(other, axis=1), 1.0, rtol=1e-5)

    # a fresh process without DuckDB and without the training data gives the same embeddings
    np.save(tmp_path / "expected.npy", got)
    inputs = [
        (q.query_text, q.user_id, q.city, q.region, q.country, q.language)
        for q in _heldout_inputs(tiny_features, rows, tiny_tables_)
    ]
    code = f"""
import sys
sys.modules["duckdb"] = None  # importing duckdb now fails
import numpy as np
from ebr.models.export import QueryInput, load_query_encoder
enc = load_query_encoder({str(folder)!r})
got = enc.encode([QueryInput(*row) for row in {inputs!r}])
assert np.allclose(got, np.load({str(tmp_path / "expected.npy")!r}), rtol=0, atol=1e-6)
assert "ebr.models.features" not in sys.modules and "ebr.models.training" not in sys.modules
assert "torch" not in sys.modules and "pandas" not in sys.modules  # numpy inference (ebr search's start)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path.cwd())
    assert out.stdout.strip() == "ok", out.stderr


def test_export_replaces_an_existing_folder(
    tmp_path: Path, trained_unified: TrainedTower, tiny_features: FeatureSet
) -> None:
    module = load_module(trained_unified.checkpoint)
    target = tmp_path / "towers" / "unified"
    export_query_tower(module.query_tower, tiny_features.featurizer, target)
    (target / "stale.txt").write_text("old")
    export_query_tower(module.query_tower, tiny_features.featurizer, target)
    assert not (target / "stale.txt").exists()
    assert [p.name for p in target.parent.iterdir()] == ["unified"]


def test_a_format_1_folder_with_torch_weights_still_loads(
    tmp_path: Path, trained_unified: TrainedTower, tiny_features: FeatureSet
) -> None:
    import json

    import torch

    module = load_module(trained_unified.checkpoint)
    folder = export_query_tower(module.query_tower, tiny_features.featurizer, tmp_path / "unified")
    queries = [QueryInput("john smith", None, "seattle"), QueryInput("chess club")]
    expected = load_query_encoder(folder).encode(queries)
    with np.load(folder / "weights.npz") as z:
        torch.save({k: torch.from_numpy(z[k]) for k in z.files}, folder / "weights.pt")
    (folder / "weights.npz").unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"format_version": 1}))
    np.testing.assert_array_equal(load_query_encoder(folder).encode(queries), expected)
