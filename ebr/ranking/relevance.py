"""The relevance filter of EBR results (the paper's §5 feedback loop): a LightGBM binary classifier trained on
rater labels of served EBR results, served as the version's stage `relevance_filter`
(ebr/retrieval/stages.py). It drops the EBR results (`ebr_results`: the hits only the (nn) part found) whose
P(relevant) is below a threshold; a result that term matching returns is never dropped.

Training (`labelled_examples`, `train_filter`): each rated task (`rating.labelled_tasks`: the raters'
majority) is looked up among the candidates the version retrieves for its request (its stages off, as
`ranker.retrieve` gives them), so that its features are those the filter sees when serving: the columns of
`candidate_features` (term match, context, embedding similarity of `filter.variant`). A task whose document
the version does not retrieve as an EBR result is left out (counted). The labelled examples are split by a
sha256 of (seed, task id): `holdout_share` of them choose the threshold, the highest that keeps at least
`target_recall` of the relevant held-out examples, the rest train the model.

A stage folder holds `trees.json` (the model, served without importing LightGBM: ebr/ranking/trees.py),
`filter.json` (threshold, variant, feature names,
candidates) and `context.npz` (the context features' look-ups); the version's checksums cover them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ebr.config import RelevanceFilterConfig
from ebr.ranking.ebr_results import ebr_results
from ebr.ranking.features import RankingContext, candidate_features, check_variant
from ebr.ranking.ranker import retrieve
from ebr.ranking.trees import Forest
from ebr.retrieval.executor import Hits
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.retrieval.stages import Retrieved, take

if TYPE_CHECKING:
    import pandas as pd  # the rating tasks' frame (training only)

META_FILE = "filter.json"
NUM_THREADS = 1  # deterministic, and the filter's batches are small


@dataclass
class RelevanceFilter:
    """A trained classifier of EBR results and its threshold; `apply` is the served stage."""

    model: Forest  # ebr/ranking/trees.py: served without importing LightGBM
    threshold: float
    variant: str
    names: list[str]
    candidates: int
    context: RankingContext | None = None

    def probabilities(self, service: SearchService, batch: Sequence[Retrieved]) -> np.ndarray:
        """P(relevant) of every hit of the batch, requests' hits concatenated."""
        features = candidate_features(service, batch, self.variant, self.context)
        if features.names != self.names:
            raise ValueError(
                f"relevance filter: version {service.version} gives {len(features.names)} feature columns, "
                f"the filter was trained on {len(self.names)} ({self.variant}); retrain it on this version"
            )
        if len(features.matrix) == 0:
            return np.zeros(0)
        return self.model.predict(features.matrix)

    def apply(self, service: SearchService, batch: Sequence[Retrieved]) -> list[Hits]:
        """Each request's hits without the EBR results whose P(relevant) < threshold (order kept)."""
        masks = [ebr_results(service, r) for r in batch]
        if not any(m.any() for m in masks):
            return [r.hits for r in batch]
        chosen = [
            i for i, m in enumerate(masks) if m.any()
        ]  # features only where there is something to judge
        p = self.probabilities(service, [batch[i] for i in chosen])
        out = [r.hits for r in batch]
        start = 0
        for i in chosen:
            n = len(batch[i].hits.doc_ids)
            keep = ~masks[i] | (p[start : start + n] >= self.threshold)
            start += n
            out[i] = take(batch[i].hits, keep)
        return out

    def save(self, folder: Path, extra: Mapping[str, Any] | None = None) -> None:
        """Write trees.json, filter.json and context.npz into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder)
        meta = {
            "threshold": self.threshold,
            "variant": self.variant,
            "features": self.names,
            "candidates": self.candidates,
            "context": self.context is not None,
        } | dict(extra or {})
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if self.context is not None:
            self.context.save(folder)


def load_filter(folder: Path, summary: Mapping[str, Any]) -> RelevanceFilter:
    """The relevance filter stage of a version (ebr.retrieval.stages.LOADERS); ValueError naming a missing
    or bad file."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        model = Forest.load(folder)
        threshold = float(meta["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: not a relevance filter stage ({exc})") from exc
    context = RankingContext.load(folder) if meta.get("context") else None
    return RelevanceFilter(
        model,
        threshold,
        str(meta["variant"]),
        [str(n) for n in meta["features"]],
        int(meta["candidates"]),
        context,
    )


@dataclass
class Examples:
    """The labelled EBR results as the filter sees them: a feature row and a 0/1 label each."""

    matrix: np.ndarray
    labels: np.ndarray
    task_ids: list[str]
    names: list[str]
    missing: int  # rated tasks the version does not retrieve as an EBR result


def task_requests(tasks: pd.DataFrame) -> tuple[list[SearchRequest], np.ndarray]:
    """One search request per distinct request of `tasks` (vertical, query, searcher, context), and each
    task's request number."""
    columns = ["vertical", "query", "searcher_id", "city", "region", "country", "language"]
    keys = tasks[columns].astype(object).where(tasks[columns].notna(), None)
    numbers: dict[tuple[Any, ...], int] = {}
    requests = []
    rows = np.zeros(len(tasks), dtype=np.int64)
    for i, key in enumerate(map(tuple, keys.to_numpy().tolist())):
        if key not in numbers:
            numbers[key] = len(requests)
            vertical, query, searcher, *context = key
            requests.append(
                SearchRequest(
                    vertical=vertical,
                    query_text=query,
                    searcher_id=None if searcher is None else int(searcher),
                    context=dict(zip(("city", "region", "country", "language"), context, strict=True)),
                )
            )
        rows[i] = numbers[key]
    return requests, rows


def labelled_examples(
    service: SearchService,
    tasks: pd.DataFrame,
    variant: str,
    candidates: int,
    context: RankingContext | None,
) -> Examples:
    """The feature rows of the rated tasks (`rating.labelled_tasks`) among the EBR results `service`
    retrieves for their requests (`candidates` per request)."""
    check_variant(variant)
    requests, request_of = task_requests(tasks)
    batch = retrieve(service, requests, candidates)
    features = candidate_features(service, batch, variant, context)
    starts = np.concatenate([[0], np.cumsum(features.groups)[:-1]]).astype(np.int64)
    masks = [ebr_results(service, r) for r in batch]
    rows, labels, ids = [], [], []
    for task, doc_id, relevant, number in zip(
        tasks["task_id"], tasks["doc_id"], tasks["relevant"], request_of, strict=True
    ):
        found = np.flatnonzero(batch[number].hits.doc_ids == int(doc_id))
        if len(found) == 0 or not masks[number][found[0]]:
            continue
        rows.append(starts[number] + found[0])
        labels.append(float(bool(relevant)))
        ids.append(str(task))
    matrix = features.matrix[np.asarray(rows, dtype=np.int64)]
    return Examples(matrix, np.asarray(labels), ids, features.names, len(tasks) - len(rows))


def holdout_mask(task_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Which examples choose the threshold: a sha256 draw of (seed, task id) below `share`."""
    draws = [
        int.from_bytes(hashlib.sha256(f"{seed}\x1f{t}".encode()).digest()[:8], "big") / 2**64
        for t in task_ids
    ]
    return np.asarray(draws) < share


def recall_threshold(probabilities: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold keeping at least `target` of the relevant examples (p >= threshold)."""
    relevant = np.sort(probabilities[labels > 0])[::-1]
    if len(relevant) == 0:
        raise ValueError("no relevant example to choose the threshold on")
    keep = max(1, math.ceil(target * len(relevant) - 1e-9))
    return float(relevant[keep - 1])


def filter_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision of the EBR results before and after the filter, recall of the relevant ones, share kept."""
    kept = probabilities >= threshold
    relevant = labels > 0
    return {
        "examples": int(len(labels)),
        "precision_before": float(relevant.mean()) if len(labels) else math.nan,
        "precision_after": float(relevant[kept].mean()) if kept.any() else math.nan,
        "recall": float(kept[relevant].mean()) if relevant.any() else math.nan,
        "kept": float(kept.mean()) if len(labels) else math.nan,
    }


class NotTrained(ValueError):
    """Too few labels, or one class only: no filter (the reason)."""


def train_filter(
    examples: Examples, config: RelevanceFilterConfig, seed: int, context: RankingContext | None
) -> tuple[RelevanceFilter, dict[str, Any]]:
    """The filter and its summary (labels, balance, threshold, held-out metrics); NotTrained with the
    reason when the labels cannot train one."""
    if not 0 < config.target_recall <= 1:
        raise ValueError(f"feedback.filter.target_recall must be in (0, 1], got {config.target_recall}")
    if not 0 < config.holdout_share < 1:
        raise ValueError(f"feedback.filter.holdout_share must be in (0, 1), got {config.holdout_share}")
    y = examples.labels
    if len(y) < config.min_labels:
        raise NotTrained(
            f"{len(y)} labelled EBR results, fewer than feedback.filter.min_labels={config.min_labels}"
        )
    held = holdout_mask(examples.task_ids, config.holdout_share, seed)
    for name, part in (("training", ~held), ("held-out", held)):
        if len(np.unique(y[part])) < 2:
            raise NotTrained(f"the {name} labels hold one class only ({int(part.sum())} labels)")
    settings = {
        "objective": "binary",
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": NUM_THREADS,
        "verbosity": -1,
    }
    params = dict(config.params)
    rounds = int(params.pop("n_estimators", 100))
    import lightgbm as lgb  # training only: serving reads trees.json (LightGBM imports sklearn and pandas)

    data = lgb.Dataset(examples.matrix[~held], y[~held], feature_name=list(examples.names))
    model = Forest.from_booster(lgb.train(settings | params, data, num_boost_round=rounds))
    p = model.predict(examples.matrix[held])
    threshold = recall_threshold(p, y[held], config.target_recall)
    trained = RelevanceFilter(
        model, threshold, config.variant, list(examples.names), config.candidates, context
    )
    summary = {
        "labels": int(len(y)),
        "relevant": int(y.sum()),
        "missing": examples.missing,
        "train": int((~held).sum()),
        "holdout": int(held.sum()),
        "threshold": threshold,
        "target_recall": config.target_recall,
        "variant": config.variant,
        "holdout_metrics": filter_metrics(p, y[held], threshold),
    }
    return trained, summary
