"""A tiny candidate for the feedback-loop tests: 300 documents of three verticals, each holding one word
(`text:w<k>`, k = i % 5) and an embedding near one of four cluster centres ((i // 5) % 4), an IVF-PQ index
probed whole (radius 2: the (nn) part matches every document of the vertical) and a tower stand-in whose
query embedding is the centre of the query word's cluster (w<k> -> k % 4). So for the query `w<k>` in a
vertical, the term part returns its documents holding w<k>, the EBR results are the others, and the relevant
EBR results (the oracle `relevant`) are those in the word's cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ebr.ann.quantize import build_index, set_nprobe
from ebr.models.ensembles import l2_normalize
from ebr.registry.publication import VersionPieces, stage_version
from ebr.retrieval.build import build_engine
from ebr.retrieval.retrievers import expression, single

DATASET = "test"
VERTICALS = ("people", "groups", "events")
WORDS = [f"w{k}" for k in range(5)]
N_DOCS = 300
DIM = 12
CENTRES = l2_normalize(np.random.default_rng(7).standard_normal((4, DIM)).astype(np.float32))
DOC_IDS = np.arange(N_DOCS, dtype=np.int64) + 1000


def word_of(doc_id: int) -> str:
    return WORDS[(doc_id - 1000) % 5]


def cluster_of(doc_id: int) -> int:
    return ((doc_id - 1000) // 5) % 4


def vertical_of(doc_id: int) -> str:
    return VERTICALS[(doc_id - 1000) % 3]


def relevant(query: str, doc_id: int) -> bool:
    """The oracle: a document is relevant to `w<k>` when it lies in the cluster of w<k>."""
    return cluster_of(doc_id) == int(query[1:]) % 4


class CentreEncoder:
    """A tower stand-in: the query embedding is the centre of the query word's cluster."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def encode(self, queries: list) -> np.ndarray:
        return np.stack([CENTRES[int(q.query_text.split()[0][1:]) % 4] for q in queries])


def make_candidate(tmp: Path) -> Path:
    """The staged candidate (no stages) in tmp/candidate."""
    rng = np.random.default_rng(0)
    clusters = np.array([cluster_of(int(d)) for d in DOC_IDS])
    docs = l2_normalize(CENTRES[clusters] + 0.35 * rng.standard_normal((N_DOCS, DIM)).astype(np.float32))
    tower = tmp / "tower"
    tower.mkdir(parents=True, exist_ok=True)
    (tower / "config.json").write_text(json.dumps({"kind": "centres"}))
    index = build_index("IVF8,PQ6x4", docs, "inner_product")
    set_nprobe(index, 8)
    documents = pd.DataFrame(
        {
            "doc_id": DOC_IDS,
            "vertical": [vertical_of(int(d)) for d in DOC_IDS],
            "title": [f"doc {d}" for d in DOC_IDS],
            "terms": [[f"text:{word_of(int(d))}", f"vertical:{vertical_of(int(d))}"] for d in DOC_IDS],
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
    pieces = VersionPieces(
        doc_ids=DOC_IDS,
        documents=documents,
        embeddings={"unified": docs},
        indexes={"unified": index},
        towers={"unified": tower},
        retrievers={"unified": spec.to_dict()},
        serving=serving,
        build_engine=build_engine,
        index_points={"unified": {"factory": "IVF8,PQ6x4", "nprobe": 8}},
    )
    folder = tmp / "candidate"
    stage_version(pieces, folder, {}, {}, "run-1", {})
    return folder
