"""The stages a version may carry around its engine (the paper's §4.3 and §5): before retrieval a query
selection policy (whether a request's (nn) part runs), after it a relevance filter of the EBR results and a
ranker of the candidates.

A stage is a folder `stages/<name>/` of the version, covered by the manifest's checksums like every other
file, and an entry `stages.<name>` of the manifest (a summary: what it was trained on, its metrics). It is
loaded by the module `LOADERS` names for it: a fixed table, never a name read from the manifest. Stages run
in `ORDER`; each can be turned off at serving (`engine.stages`, and per request `SearchRequest.stages`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ebr.retrieval.executor import Hits
from ebr.retrieval.query import Node

if TYPE_CHECKING:
    from ebr.retrieval.service import SearchRequest, SearchService

STAGES_DIR = "stages"
LOADERS = {  # stage name -> "module:function" loading it from its folder and manifest summary
    "query_policy": "ebr.selection.queries:load_policy",
    "relevance_filter": "ebr.ranking.relevance:load_filter",
    "ranker": "ebr.ranking.ranker:load_ranker",
}
ORDER = ("query_policy", "relevance_filter", "ranker")


@dataclass
class Retrieved:
    """One request's retrieval, as the stages after it see it."""

    request: SearchRequest
    root: Node  # the expression that ran (after the query policy)
    hits: Hits  # the engine's hits, at most `candidates` of them
    # the unit query embedding per (nn) / (rerank) key of `root`: none for a key the policy dropped (the
    # embedding is not computed then; a stage that wants it gives such requests missing values)
    vectors: Mapping[str, np.ndarray]


class QueryStage(Protocol):
    """Runs before retrieval: the expression to run for a request (its (nn) part may be dropped)."""

    def select(self, request: SearchRequest, root: Node) -> Node: ...


class HitStage(Protocol):
    """Runs after retrieval on a batch of requests: new hits per request (filtered, re-ordered)."""

    candidates: int  # how many hits it wants retrieved per request (the limit is applied after it)

    def apply(self, service: SearchService, batch: Sequence[Retrieved]) -> list[Hits]: ...


def load_stages(version_dir: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The version's stages by name, in `ORDER`; ValueError for a stage this code cannot load."""
    listed = manifest.get("stages") or {}
    unknown = sorted(set(listed) - set(LOADERS))
    if unknown:
        raise ValueError(f"{version_dir}: unknown stage {unknown[0]!r} (known: {', '.join(ORDER)})")
    out = {}
    for name in ORDER:
        if name in listed:
            module, function = LOADERS[name].split(":")
            load = getattr(importlib.import_module(module), function)
            out[name] = load(version_dir / STAGES_DIR / name, listed[name])
    return out


def take(hits: Hits, keep: np.ndarray) -> Hits:
    """`hits` restricted to the positions `keep` (a boolean mask or an index array), in that order."""
    return Hits(hits.doc_ids[keep], hits.scores[keep], hits.total, hits.nn, hits.ranking)
