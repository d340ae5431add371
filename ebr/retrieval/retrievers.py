"""What gets served and gated: a single model, a weighted-concatenation ensemble or a cascade.

A `RetrieverSpec` names the models and how they combine; a version's manifest stores its retrievers by name.
`index_docs` / `index_queries` give the matrices its (nn) field is built and searched on, and `expression`
the engine expression that serves it on a vertical: the cascade's re-rank is the engine's (rerank ...), so
every spec is served, and gated, by the engine itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ebr.models.ensembles import l2_normalize, weighted_concat_docs, weighted_concat_query
from ebr.retrieval.terms import term_value

KINDS = ("single", "ensemble", "cascade")
KEY = re.compile(r"^[A-Za-z0-9_.+-]+$")  # keys and ensemble names become file names in a version


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


def expression(
    spec: RetrieverSpec,
    vertical: str,
    nprobe: int,
    radius: float | None = None,
    k: int | None = None,
    fusion: str | None = None,
    terms: bool = True,
) -> str:
    """The engine expression that serves `spec` on `vertical`: term matches or the nn of the spec's index
    key (radius mode, or top-K mode with `k`); a cascade re-ranks the first stage's best `spec.n` by its
    second model; with `fusion` (e.g. ":bm25 0.3", ":rrf 60") any query term matches and BM25 is fused
    with the cosine; `terms=False`: the nn alone (no term matches, no fusion)."""
    if (radius is None) == (k is None):
        raise ValueError("expression: give a radius or a k")
    if fusion is not None and not terms:
        raise ValueError("expression: a fusion needs the term matches")
    mode = f":radius {radius!r}" if radius is not None else f":k {k}"
    nn = f"(nn {spec.index_key} {mode} :nprobe {nprobe})"
    text = "$text" if fusion is None else "$anytext"
    matches = f"(or {text} {nn})" if terms else nn
    expr = f"(and (term vertical:{term_value(vertical)}) {matches})"
    if fusion is not None:
        expr = f"(fuse {fusion} {expr})"
    if spec.kind == "cascade":
        expr = f"(rerank {spec.keys[1]} :n {spec.n} {expr})"
    return expr


def bm25_expression(vertical: str) -> str:
    """The BM25 baseline through the engine: any query term, ranked by BM25."""
    return f"(fuse :bm25 1.0 (and (term vertical:{term_value(vertical)}) $anytext))"
