"""What gets served and gated: a single model, a weighted-concatenation ensemble or a cascade, over an index.

A `RetrieverSpec` names the models and how they combine; it is stored in a version's manifest. A `Retriever`
applies a spec to document embeddings, an optional quantised index and query encoders, either in memory (the
candidate of a retrain) or loaded from a published version folder (`load_version`), so that the recall gate
measures the candidate and the served version with the same code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from ebr import registry
from ebr.ann.knn import as_float32, exact_knn
from ebr.models.ensembles import cascade_search, l2_normalize, weighted_concat_docs, weighted_concat_query

KINDS = ("single", "ensemble", "cascade")
KEY = re.compile(r"^[A-Za-z0-9_.+-]+$")  # keys and ensemble names become file names in a version


class QueryEncoder(Protocol):
    def encode(self, queries: Sequence[Any]) -> np.ndarray: ...


@dataclass(frozen=True)
class RetrieverSpec:
    """single: keys=(model,); ensemble: keys=models, weights=a_i; cascade: keys=(first, second), n."""

    name: str
    kind: str
    keys: tuple[str, ...]
    weights: tuple[float, ...] = ()
    n: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"retriever {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        expected = {"single": 1, "cascade": 2}.get(self.kind)
        if (expected and len(self.keys) != expected) or not self.keys:
            raise ValueError(f"retriever {self.name!r}: a {self.kind} takes {expected or '>= 1'} model keys")
        for key in (*self.keys, self.index_key):
            if not KEY.match(key):
                raise ValueError(f"retriever {self.name!r}: key {key!r} must match {KEY.pattern}")
        if self.kind == "cascade" and self.n < 1:
            raise ValueError(f"retriever {self.name!r}: a cascade needs n >= 1 first-stage results")
        if self.kind == "ensemble" and self.weights and len(self.weights) != len(self.keys):
            raise ValueError(
                f"retriever {self.name!r}: {len(self.weights)} weights for {len(self.keys)} models"
            )

    @property
    def index_key(self) -> str:
        """The key of the embeddings the ANN index is built on (a cascade's first stage)."""
        return self.name if self.kind == "ensemble" else self.keys[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrieverSpec:
        return cls(
            name=d["name"],
            kind=d["kind"],
            keys=tuple(d["keys"]),
            weights=tuple(float(w) for w in d.get("weights", ())),
            n=int(d.get("n", 0)),
        )


def single(key: str) -> RetrieverSpec:
    return RetrieverSpec(name=key, kind="single", keys=(key,))


def index_docs(spec: RetrieverSpec, doc_vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The document matrix the spec's index is built on (an ensemble's unit-norm concatenation)."""
    if spec.kind == "ensemble":
        if spec.name in doc_vectors:
            return doc_vectors[spec.name]
        return weighted_concat_docs([doc_vectors[k] for k in spec.keys], normalize=True)
    return doc_vectors[spec.index_key]


def index_queries(spec: RetrieverSpec, query_vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The query matrix searched against `index_docs` (an ensemble's weighted concatenation, unit rows)."""
    if spec.kind == "ensemble":
        if not spec.weights:
            raise ValueError(
                f"ensemble {spec.name!r} has no weights yet: choose them on the validation split"
            )
        return weighted_concat_query([query_vectors[k] for k in spec.keys], spec.weights, normalize=True)
    return l2_normalize(query_vectors[spec.index_key])


def search_rows(
    spec: RetrieverSpec,
    query_vectors: Mapping[str, np.ndarray],
    doc_vectors: Mapping[str, np.ndarray],
    k: int,
    index: faiss.Index | None = None,
) -> np.ndarray:
    """Top-k document rows (n_queries, k), -1 padded: exact KNN, or through `index` when given."""
    if spec.kind == "cascade":
        first, second = spec.keys
        _, rows = cascade_search(
            l2_normalize(query_vectors[first]),
            doc_vectors.get(first) if index is None else None,
            query_vectors[second],
            doc_vectors[second],
            spec.n,
            k,
            first_index=index,
        )
        return rows
    queries = index_queries(spec, query_vectors)
    if index is None:
        return exact_knn(queries, index_docs(spec, doc_vectors), k)[1]
    return index.search(as_float32(queries), k)[1]


class Retriever:
    """A spec bound to documents (ids, embeddings), its index (None = exact) and query encoders."""

    def __init__(
        self,
        spec: RetrieverSpec,
        doc_ids: np.ndarray,
        doc_vectors: Mapping[str, np.ndarray],
        index: faiss.Index | None = None,
        encoders: Mapping[str, QueryEncoder] | None = None,
        version: str | None = None,
    ) -> None:
        self.spec, self.doc_ids, self.doc_vectors = spec, np.asarray(doc_ids), doc_vectors
        self.index, self.encoders, self.version = index, dict(encoders or {}), version

    def search_vectors(self, query_vectors: Mapping[str, np.ndarray], k: int) -> np.ndarray:
        """Top-k document ids (n_queries, k), -1 where fewer than k were found."""
        rows = search_rows(self.spec, query_vectors, self.doc_vectors, k, self.index)
        return np.where(rows >= 0, self.doc_ids[np.maximum(rows, 0)], -1)

    def encode(self, queries: Sequence[Any]) -> dict[str, np.ndarray]:
        missing = [k for k in self.spec.keys if k not in self.encoders]
        if missing:
            raise KeyError(f"retriever {self.spec.name!r}: no query encoder for {missing}")
        return {key: self.encoders[key].encode(queries) for key in self.spec.keys}

    def search(self, queries: Sequence[Any], k: int, block_size: int = 1024) -> np.ndarray:
        """Encode raw queries with the spec's towers and return the top-k document ids, in query blocks."""
        blocks = [
            self.search_vectors(self.encode(queries[i : i + block_size]), k)
            for i in range(0, len(queries), block_size)
        ]
        return np.concatenate(blocks) if blocks else np.empty((0, k), dtype=np.int64)


def default_encoder_loader(path: Path) -> QueryEncoder:
    from ebr.models.export import load_query_encoder  # the towers' export format is owned by ebr/models/

    return load_query_encoder(path)


def load_version(
    version_dir: Path,
    verify: bool = True,
    encoder_loader: Callable[[Path], QueryEncoder] = default_encoder_loader,
) -> Retriever:
    """The retriever of a published version folder; verifies every file's checksum first unless told not to.

    Raises ebr.registry.CorruptVersionError (naming the file) for a tampered or incomplete version.
    """
    manifest = (
        registry.verify_version(version_dir)
        if verify
        else json.loads((version_dir / registry.MANIFEST).read_text())
    )
    served = manifest.get("retriever")
    if not served:
        raise registry.CorruptVersionError(f"{version_dir / registry.MANIFEST}: no 'retriever' section")
    spec = RetrieverSpec.from_dict(served["spec"])
    doc_vectors = {
        p.stem: np.load(p, mmap_mode="r") for p in sorted((version_dir / "embeddings").glob("*.npy"))
    }
    index_path = version_dir / "faiss" / f"{spec.index_key}.faiss"
    index = faiss.read_index(str(index_path)) if index_path.is_file() else None
    encoders = {key: encoder_loader(version_dir / "towers" / key) for key in spec.keys}
    return Retriever(
        spec,
        np.load(version_dir / "doc_ids.npy"),
        doc_vectors,
        index,
        encoders,
        version=manifest.get("version", version_dir.name),
    )
