"""Helpers of the engine tests: clustered unit vectors, trained faiss quantisers, small term vocabularies.

The quantisers are trained once per session on 3,000 deterministic points (enough for 16-centroid PQ and
OPQ), and documents are few, so every index build in a test takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from ebr import registry
from ebr.config import engine_defaults
from ebr.retrieval.build import build_engine, build_engine_index
from ebr.retrieval.index import EngineIndex

D = 16
IMPOSSIBLE = 1e12
FORCED_PLANS = {  # costs that make the planner pick one plan (and one kind of selector)
    "scan": replace(engine_defaults().planner, selector_check=IMPOSSIBLE, candidate_per_allowed=IMPOSSIBLE),
    "selector-hash": replace(
        engine_defaults().planner, selector_check=0, hash_per_allowed=0, candidate_per_allowed=IMPOSSIBLE
    ),
    "selector-bitmap": replace(
        engine_defaults().planner,
        selector_check=0,
        hash_per_allowed=IMPOSSIBLE,
        bitmap_per_id=0,
        candidate_per_allowed=IMPOSSIBLE,
    ),
    "candidates": replace(engine_defaults().planner, candidate_per_allowed=0, candidate_per_hit=0),
}
FACTORIES = {"unified": "OPQ4,IVF16,PQ4x4", "text": "IVF8,PQ4x4"}
CENTERS = np.random.default_rng(1234).standard_normal((24, D)).astype(np.float32)
LOCATIONS = ["location:seattle", "location:menlo_park", "location:paris", "location:lyon", "location:oslo"]
WORDS = [f"text:w{i}" for i in range(8)]
VERTICALS = ["vertical:people", "vertical:groups"]
PAYLOADS = [-0.5, 0.1, 0.25, 0.35, 0.5, 0.8, 1.0]  # 0.1 and 0.35 are not exact in float32
FREQUENCIES = [2.0, 3.0, 4.0]
TEXT_PAYLOADS = [*PAYLOADS, *FREQUENCIES]  # a text term's payload is its frequency (BM25: below 0 counts 0)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, spread: float = 0.45) -> np.ndarray:
    """Unit vectors around a fixed set of centres (more realistic than uniform noise for IVF)."""
    centers = CENTERS[rng.integers(len(CENTERS), size=n)]
    return unit(centers + spread * rng.standard_normal((n, D)).astype(np.float32))


def train_indexes() -> dict[str, faiss.Index]:
    """Trained, empty quantised indexes per key (inner product, as published)."""
    faiss.omp_set_num_threads(1)  # tiny problems: threads only add contention
    sample = clustered(np.random.default_rng(0), 3_000)
    out = {}
    for key, factory in FACTORIES.items():
        index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
        if isinstance(index, faiss.IndexPreTransform):
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            pq = faiss.ProductQuantizer(D, 4, 4)  # train OPQ with the index's own 16-centroid PQ
            opq.pq, opq.niter = pq, 10
            index.train(sample)
            opq.pq = None  # `pq` is freed when this function returns
        else:
            index.train(sample)
        out[key] = index
    return out


@dataclass
class Corpus:
    doc_ids: np.ndarray
    terms: list[list[str]]
    embeddings: dict[str, np.ndarray]
    payloads: list[dict[str, float]]  # per document, the terms that carry a payload

    def documents(self) -> list[list[str]] | list[dict[str, float | None]]:
        """The builder's input: plain term lists, or mappings term -> payload when some term has one."""
        if not any(self.payloads):
            return self.terms
        return [{t: p.get(t) for t in terms} for terms, p in zip(self.terms, self.payloads, strict=True)]

    def doc_terms(self) -> dict[int, dict[str, float | None]]:
        """The reference's view: doc id -> term -> payload (None: none)."""
        return {
            int(d): {t: p.get(t) for t in terms}
            for d, terms, p in zip(self.doc_ids, self.terms, self.payloads, strict=True)
        }


def make_corpus(seed: int, n: int, payloads: bool = False) -> Corpus:
    """`n` documents; with `payloads`, about 70% of their text terms carry one of TEXT_PAYLOADS, their
    frequency (the terms and embeddings are the same either way)."""
    rng = np.random.default_rng(seed)
    doc_ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    terms = []
    for _ in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(1, 4)), replace=False).tolist()
        location = LOCATIONS[min(int(rng.geometric(0.45)) - 1, len(LOCATIONS) - 1)]
        terms.append([VERTICALS[int(rng.integers(2))], location, *words])
    embeddings = {key: clustered(rng, n) for key in FACTORIES}
    weights = np.random.default_rng(seed + 10_000)
    doc_payloads = [
        {
            t: TEXT_PAYLOADS[int(weights.integers(len(TEXT_PAYLOADS)))]
            for t in doc[2:]
            if weights.random() < 0.7
        }
        if payloads
        else {}
        for doc in terms
    ]
    return Corpus(doc_ids, terms, embeddings, doc_payloads)


def corpus_index(corpus: Corpus, trained: dict[str, faiss.Index]) -> EngineIndex:
    return build_engine_index(corpus.doc_ids, corpus.documents(), corpus.embeddings, trained)


def write_version(
    version_dir: Path,
    corpus: Corpus,
    trained: dict[str, faiss.Index],
    manifest: dict | None = None,
    titles: list[str] | None = None,
) -> Path:
    """A published version folder (the publication's format) with its engine/ built by the builder from the
    trained quantisers."""
    import pandas as pd

    version_dir.mkdir(parents=True)
    np.save(version_dir / "doc_ids.npy", corpus.doc_ids)
    pd.DataFrame(
        {
            "doc_id": corpus.doc_ids,
            "vertical": [t[0].split(":")[1] for t in corpus.terms],
            "title": titles or [" ".join(w.split(":")[1] for w in t[2:]) for t in corpus.terms],
            "terms": corpus.terms,
        }
    ).to_parquet(version_dir / "documents.parquet", index=False)
    (version_dir / "embeddings").mkdir()
    for key, matrix in corpus.embeddings.items():
        np.save(version_dir / "embeddings" / f"{key}.npy", matrix)
    build_engine(version_dir / "engine", {key: trained[key] for key in corpus.embeddings})
    registry.write_manifest(version_dir, {"version": version_dir.name, **(manifest or {})})
    return version_dir
