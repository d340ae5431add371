"""A tiny deterministic candidate for publication tests: documents, one projection 'tower', an IVF-PQ index.

A model is a projection of raw feature vectors; its exported tower folder holds the projection, loaded by
`load_encoder` (the stand-in for ebr.models.export.load_query_encoder, whose towers other tests cover).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ebr.ann.quantize import build_index, set_nprobe
from ebr.models.ensembles import l2_normalize
from ebr.retrieval.retrievers import Retriever, single
from ebr.steps.gate import GateConfig, GateSessions, evaluate_gate
from ebr.steps.publish import VersionPieces

VERTICALS = ("people", "groups", "events")
GATE = GateConfig.from_mapping(
    {"tolerance": 0.02, "verticals": {v: {"k": 5, "floor": 0.2} for v in VERTICALS}}
)


class ProjectionEncoder:
    def __init__(self, path: Path) -> None:
        self.matrix = np.load(path / "projection.npy")

    def encode(self, queries) -> np.ndarray:
        return l2_normalize(np.asarray(queries, dtype=np.float32) @ self.matrix)


def load_encoder(path: Path) -> ProjectionEncoder:
    return ProjectionEncoder(path)


@dataclass
class World:
    doc_ids: np.ndarray
    raw_docs: np.ndarray
    sessions: dict[str, GateSessions]


def make_world(n_docs: int = 300, raw_dim: int = 16, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    raw_docs = rng.standard_normal((n_docs, raw_dim)).astype(np.float32)
    doc_ids = np.arange(n_docs, dtype=np.int64) * 7 + 1000
    sessions = {}
    for i, vertical in enumerate(VERTICALS):
        rows = np.arange(i, n_docs, len(VERTICALS))[:40]
        queries = raw_docs[rows] + 0.3 * rng.standard_normal((len(rows), raw_dim)).astype(np.float32)
        sessions[vertical] = GateSessions(queries=queries, targets=[np.array([doc_ids[r]]) for r in rows])
    return World(doc_ids, raw_docs, sessions)


def make_pieces(world: World, tmp: Path, doc_noise: float = 0.0, seed: int = 1) -> VersionPieces:
    """A candidate whose document embeddings carry `doc_noise` (the larger, the worse its recall)."""
    rng = np.random.default_rng(seed)
    projection = np.linalg.qr(rng.standard_normal((world.raw_docs.shape[1], 12)))[0].astype(np.float32)
    docs = l2_normalize(
        world.raw_docs @ projection + doc_noise * rng.standard_normal((len(world.raw_docs), 12))
    )
    tower = tmp / f"tower-{seed}-{doc_noise}"
    tower.mkdir(parents=True, exist_ok=True)
    np.save(tower / "projection.npy", projection)
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

    def build_engine(folder: Path) -> None:  # stands in for retrieval's builder
        (folder / "postings.json").write_text(json.dumps({"n_docs": len(documents)}))

    return VersionPieces(
        doc_ids=world.doc_ids,
        documents=documents,
        embeddings={"unified": docs},
        indexes={"unified": index},
        towers={"unified": tower},
        retriever=single("unified"),
        build_engine=build_engine,
        index_points={"unified": {"factory": "IVF8,PQ6x4", "nprobe": 8}},
    )


def in_memory(pieces: VersionPieces) -> Retriever:
    return Retriever(
        pieces.retriever,
        pieces.doc_ids,
        pieces.embeddings,
        pieces.indexes["unified"],
        {k: load_encoder(p) for k, p in pieces.towers.items()},
    )


def passing_gate():
    return evaluate_gate({v: 0.9 for v in VERTICALS}, None, GATE)
