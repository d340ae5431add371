"""A tiny deterministic candidate for publication tests: documents, one projection 'tower', an IVF-PQ index,
a real engine built from it and a template per vertical.

A model is a projection of raw feature vectors. Sessions carry their query embedding explicitly (the
projection of a noisy copy of the target's raw vector), so the versions are measured through the real
SearchService and engine without a trained query tower (whose export other tests cover).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ebr.ann.quantize import build_index, set_nprobe
from ebr.evaluation.gate import GateConfig, evaluate_gate
from ebr.models.ensembles import l2_normalize
from ebr.registry.publication import VersionPieces
from ebr.retrieval.build import build_engine
from ebr.retrieval.calibration import Sessions
from ebr.retrieval.retrievers import expression, single
from ebr.retrieval.service import SearchRequest

DATASET = "test"  # the dataset these tests publish into
VERTICALS = ("people", "groups", "events")
GATE = GateConfig.from_mapping({"tolerance": 0.02, "k": 5, "floor": 0.2}, VERTICALS)


@dataclass
class World:
    doc_ids: np.ndarray
    raw_docs: np.ndarray
    raw_queries: dict[str, np.ndarray]
    targets: dict[str, list[np.ndarray]]


def make_world(n_docs: int = 300, raw_dim: int = 16, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    raw_docs = rng.standard_normal((n_docs, raw_dim)).astype(np.float32)
    doc_ids = np.arange(n_docs, dtype=np.int64) * 7 + 1000
    queries, targets = {}, {}
    for i, vertical in enumerate(VERTICALS):
        rows = np.arange(i, n_docs, len(VERTICALS))[:40]
        queries[vertical] = raw_docs[rows] + 0.3 * rng.standard_normal((len(rows), raw_dim)).astype(
            np.float32
        )
        targets[vertical] = [np.array([doc_ids[r]]) for r in rows]
    return World(doc_ids, raw_docs, queries, targets)


def projection(seed: int, raw_dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.linalg.qr(rng.standard_normal((raw_dim, 12)))[0].astype(np.float32)


def sessions(world: World, seed: int = 1) -> dict[str, Sessions]:
    """The sessions as a model of projection `seed` would send them (the embedding given explicitly)."""
    p = projection(seed)
    return {
        v: Sessions(
            [SearchRequest(vertical=v, vector=q.tolist()) for q in l2_normalize(world.raw_queries[v] @ p)],
            world.targets[v],
        )
        for v in VERTICALS
    }


def make_pieces(world: World, tmp: Path, doc_noise: float = 0.0, seed: int = 1) -> VersionPieces:
    """A candidate whose document embeddings carry `doc_noise` (the larger, the worse its recall)."""
    rng = np.random.default_rng(seed)
    docs = l2_normalize(
        world.raw_docs @ projection(seed) + doc_noise * rng.standard_normal((len(world.raw_docs), 12))
    )
    tower = tmp / f"tower-{seed}-{doc_noise}"
    tower.mkdir(parents=True, exist_ok=True)
    np.save(tower / "projection.npy", projection(seed))
    (tower / "config.json").write_text(json.dumps({"kind": "projection"}))
    index = build_index("IVF8,PQ6x4", docs, "inner_product")
    set_nprobe(index, 8)
    documents = pd.DataFrame(
        {
            "doc_id": world.doc_ids,
            "vertical": [VERTICALS[i % 3] for i in range(len(world.doc_ids))],
            "title": [f"doc {i}" for i in world.doc_ids],
            "terms": [[f"text:doc{i}", f"vertical:{VERTICALS[n % 3]}"] for n, i in enumerate(world.doc_ids)],
        }
    )
    spec = single("unified")
    serving = {
        "default_vertical": "people",
        "verticals": {
            v: {"retriever": "unified", "key": "unified", "expr": expression(spec, v, 8, radius=2.0)}
            for v in VERTICALS
        },
    }
    return VersionPieces(
        doc_ids=world.doc_ids,
        documents=documents,
        embeddings={"unified": docs},
        indexes={"unified": index},
        towers={"unified": tower},
        retrievers={"unified": spec.to_dict()},
        serving=serving,
        build_engine=build_engine,
        index_points={"unified": {"factory": "IVF8,PQ6x4", "nprobe": 8}},
    )


def passing_gate() -> dict:
    return evaluate_gate({v: 0.9 for v in VERTICALS}, None, GATE).to_dict()
