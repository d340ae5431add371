"""The ranking stage (the paper's §5): LightGBM lambdarank over the retrieved candidates, trained from the
click logs, served as the version's stage `ranker` (ebr/retrieval/stages.py).

Training rows are the candidates a version retrieves for logged requests (`retrieve`: its stages off, the
query embeddings computed once and passed in), labelled 1 where the session clicked the document, 0
otherwise; a request whose candidates hold no click teaches lambdarank nothing and is left out. LightGBM's
lambdarank is the field's usual learning-to-rank objective (it optimises NDCG directly, handles NaN features
and is deterministic with `deterministic` and a seed).

A stage folder holds `trees.json` (the model as served: ebr/ranking/trees.py, no LightGBM import at
serving), `model.txt` (LightGBM's text model of the same trees, for LightGBM's tools), `ranker.json`
(variant, feature names, candidates, threads) and `context.npz` (the context features' look-ups,
ebr/ranking/features.py); the version's checksums cover them. Serving re-orders each request's candidates
by the model's score (ties: the engine's order) and the hits' scores become the model's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebr.evaluation.metrics import ndcg_at_k
from ebr.ranking.features import RankingContext, candidate_features, embedding_width, feature_names
from ebr.ranking.trees import Forest
from ebr.retrieval.executor import Hits
from ebr.retrieval.stages import ORDER, Retrieved, take

if TYPE_CHECKING:
    import lightgbm as lgb

    from ebr.retrieval.service import SearchRequest, SearchService

MODEL_FILE = "model.txt"
META_FILE = "ranker.json"
STAGES_OFF = dict.fromkeys(ORDER, False)


@dataclass
class Ranker:
    """A trained lambdarank model and what its features need; `apply` is the served stage."""

    model: Forest
    variant: str
    names: list[str]
    candidates: int
    num_threads: int
    context: RankingContext | None = None
    booster: lgb.Booster | None = None  # the trained booster (training only: importances, model.txt)

    def scores(self, service: SearchService, batch: Sequence[Retrieved]) -> tuple[np.ndarray, np.ndarray]:
        """(model score of every hit of the batch, hits per request)."""
        features = candidate_features(service, batch, self.variant, self.context)
        if features.names != self.names:
            raise ValueError(
                f"ranker: version {service.version} gives features {len(features.names)} columns wide, the "
                f"model was trained on {len(self.names)} ({self.variant}); retrain the ranker on this "
                "version"
            )
        if len(features.matrix) == 0:
            return np.zeros(0), features.groups
        return self.model.predict(features.matrix), features.groups

    def apply(self, service: SearchService, batch: Sequence[Retrieved]) -> list[Hits]:
        """Each request's first `candidates` hits re-ordered by the model's score, which becomes their score;
        hits past them (a request's limit above `candidates`) follow in the engine's order with no score:
        the model only ranks what it was trained on (the first `candidates` of the engine's order)."""
        heads = [replace(r, hits=take(r.hits, slice(self.candidates))) for r in batch]
        scores, groups = self.scores(service, heads)
        out, start = [], 0
        for retrieved, n in zip(batch, groups.tolist(), strict=True):
            mine = scores[start : start + n]
            start += n
            order = np.lexsort((np.arange(n), -mine))
            hits = retrieved.hits
            rest = np.full(len(hits.doc_ids) - n, np.nan)
            doc_ids = np.concatenate([hits.doc_ids[:n][order], hits.doc_ids[n:]])
            out.append(Hits(doc_ids, np.concatenate([mine[order], rest]), hits.total, hits.nn, hits.ranking))
        return out

    def save(self, folder: Path, extra: Mapping[str, Any] | None = None) -> None:
        """Write trees.json, model.txt (when trained here), ranker.json and context.npz into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder)
        if self.booster is not None:
            (folder / MODEL_FILE).write_text(self.booster.model_to_string())
        meta = {
            "variant": self.variant,
            "features": self.names,
            "candidates": self.candidates,
            "num_threads": self.num_threads,
            "context": self.context is not None,
        } | dict(extra or {})
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if self.context is not None:
            self.context.save(folder)


def load_ranker(folder: Path, summary: Mapping[str, Any]) -> Ranker:
    """The ranker stage of a version (ebr.retrieval.stages.LOADERS); ValueError naming a missing or bad
    file."""
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
        model = Forest.load(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: not a ranker stage ({exc})") from exc
    context = RankingContext.load(folder) if meta.get("context") else None
    return Ranker(
        model,
        str(meta["variant"]),
        [str(n) for n in meta["features"]],
        int(meta["candidates"]),
        int(meta["num_threads"]),
        context,
    )


def retrieve(
    service: SearchService, requests: Sequence[SearchRequest], candidates: int, batch_size: int = 256
) -> list[Retrieved]:
    """The candidates `service` retrieves for each request with its stages off (what a ranker is trained
    on), as the stages after retrieval see them; query embeddings are computed once per request."""
    out: list[Retrieved] = []
    for start in range(0, len(requests), batch_size):
        chunk = list(requests[start : start + batch_size])
        roots = [service.expression(r) for r in chunk]
        vectors = service.query_vectors(roots, chunk)
        asked = [
            replace(r, limit=candidates, stages=STAGES_OFF, vector=dict(v) or r.vector)
            for r, v in zip(chunk, vectors, strict=True)
        ]
        responses = service.search_many(asked)
        out += [
            Retrieved(r, root, response.hits, v)
            for r, root, response, v in zip(asked, roots, responses, vectors, strict=True)
        ]
    return out


def click_labels(batch: Sequence[Retrieved], targets: Sequence[np.ndarray]) -> np.ndarray:
    """1.0 for each hit the request's session clicked, else 0.0, the batch's hits concatenated."""
    parts = [np.isin(r.hits.doc_ids, t).astype(np.float64) for r, t in zip(batch, targets, strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0)


def train_booster(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    names: Sequence[str],
    params: Mapping[str, Any],
    rounds: int,
    early_stopping: int,
    seed: int,
    num_threads: int,
) -> lgb.Booster:
    """A lambdarank booster on (matrix, labels, group sizes), early-stopped on NDCG@10 of `valid`."""
    import lightgbm as lgb  # training only: serving reads trees.json (LightGBM imports sklearn and pandas)

    settings = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": num_threads,
        "verbosity": -1,
    } | dict(params)
    matrix, labels, groups = train
    data = lgb.Dataset(matrix, labels, group=groups, feature_name=list(names), free_raw_data=False)
    sets, callbacks = [], []
    if valid is not None and len(valid[2]):
        sets = [lgb.Dataset(valid[0], valid[1], group=valid[2], reference=data)]
        callbacks = [lgb.early_stopping(early_stopping, verbose=False)]
    return lgb.train(settings, data, num_boost_round=rounds, valid_sets=sets, callbacks=callbacks)


def with_clicks(
    batch: Sequence[Retrieved], targets: Sequence[np.ndarray]
) -> tuple[list[Retrieved], list[np.ndarray]]:
    """The requests whose candidates hold at least one click (the others teach lambdarank nothing)."""
    kept = [
        i for i, (r, t) in enumerate(zip(batch, targets, strict=True)) if np.isin(r.hits.doc_ids, t).any()
    ]
    return [batch[i] for i in kept], [targets[i] for i in kept]


def ndcg_of_lists(ranked: Sequence[np.ndarray], targets: Sequence[np.ndarray], k: int = 10) -> float:
    """Mean NDCG@k of ranked doc-id lists against each session's clicked documents (grade 1)."""
    values = [
        ndcg_at_k(list(map(int, r)), dict.fromkeys(map(int, t), 1), k)
        for r, t in zip(ranked, targets, strict=True)
    ]
    return float(np.mean(values)) if values else float("nan")


def width_names(service: SearchService, variant: str) -> list[str]:
    """The feature names a ranker of `variant` has on `service`'s version."""
    return feature_names(variant, embedding_width(service))
