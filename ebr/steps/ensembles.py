"""Step `ensembles-and-ann`: ensemble weights and ANN tuning on the tuning sessions (paper §4.1, §6.2).

Every retriever of conf/ensemble whose models exist is evaluated; the weights of the weighted concatenations
are chosen on the tuning sessions; an index is tuned against the share of documents scanned for every
embedding key a retriever searches or re-ranks with, and saved as <key>.faiss. Which retriever each vertical
serves is chosen later, through the engine (ebr/steps/serving.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ebr.ann.quantize import table3_markdown, tune
from ebr.config import typed
from ebr.evaluation.ensembles import evaluation_markdown, evaluation_table, fill_weights, specs_from_config
from ebr.models.features import FeatureSet
from ebr.models.training import embed_queries, load_module
from ebr.retrieval.quantized import unsupported_reason
from ebr.retrieval.retrievers import RetrieverSpec, index_docs, index_queries
from ebr.runners import SERIAL, Shards

log = logging.getLogger(__name__)


def query_vectors(
    features: FeatureSet, models: Mapping[str, Any], rows: np.ndarray, shards: Shards = SERIAL
) -> dict[str, np.ndarray]:
    """Each model's query embeddings of the session rows (its training-time tower)."""
    return {
        n: embed_queries(load_module(Path(i["checkpoint"])), features, rows, shards=shards)
        for n, i in models.items()
    }


def doc_vectors(models: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each model's document embeddings (rows in features.doc_ids order)."""
    return {name: np.load(info["embeddings"]) for name, info in models.items()}


def clicked_rows(features: FeatureSet, session_rows: np.ndarray) -> list[np.ndarray]:
    """Per session row, the document rows it clicked."""
    imp = features.impressions
    clicks = imp[imp["clicked"] & imp["session_row"].isin(session_rows)]
    by_session = clicks.groupby("session_row")["doc_row"].apply(np.asarray).to_dict()
    return [by_session.get(int(r), np.empty(0, np.int64)) for r in session_rows]


def index_keys(specs: list[RetrieverSpec]) -> list[str]:
    """The keys the engine needs an (nn) field for: what each retriever searches or re-ranks with."""
    keys = {s.index_key for s in specs} | {s.keys[1] for s in specs if s.kind == "cascade"}
    return sorted(keys)


@dataclass
class TuningInputs:
    """What the step weighs and tunes on: the tuning sessions with a click, each model's vectors."""

    specs: list[RetrieverSpec]  # with the weights chosen on the tuning sessions
    skipped: list[Any]  # retrievers without their models
    weight_tables: Any
    queries: dict[str, np.ndarray]  # per model, the tuning sessions' query embeddings
    docs: dict[str, np.ndarray]  # per model, the document embeddings
    targets: list[np.ndarray]  # per tuning session, its clicked document rows

    def index_vectors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(documents, queries) of the embedding key `key` (a model or an ensemble)."""
        by_key = {s.index_key: s for s in self.specs} | {
            k: RetrieverSpec(k, "single", (k,)) for k in self.docs
        }
        return index_docs(by_key[key], self.docs), index_queries(by_key[key], self.queries)


def tuning_inputs(
    cfg: DictConfig, features: FeatureSet, models: Mapping[str, Any], shards: Shards = SERIAL
) -> TuningInputs:
    """The tuning sessions with a click, their embeddings per model, the ensemble weights chosen on them."""
    rows = features.part_rows("tune")
    targets = clicked_rows(features, rows)
    keep = [i for i, t in enumerate(targets) if len(t)]
    if not keep:
        raise ValueError("no tuning session has a click: give data.split.tune sessions with clicks")
    queries = {k: v[keep] for k, v in query_vectors(features, models, rows, shards).items()}
    docs, targets = doc_vectors(models), [targets[i] for i in keep]
    ecfg = OmegaConf.to_container(cfg.ensemble, resolve=True)
    specs, skipped = specs_from_config(ecfg, list(models))
    specs, weight_tables = fill_weights(
        specs, queries, docs, targets, int(ecfg["validation_k"]), ecfg["weight_grid"]
    )
    return TuningInputs(specs, skipped, weight_tables, queries, docs, targets)


def ensembles_and_index(
    cfg: DictConfig, features: FeatureSet, models: Mapping[str, Any], out: Path, shards: Shards = SERIAL
) -> dict[str, Any]:
    """Weights on the tuning sessions, an ANN index tuned per embedding key, the exact-vs-quantised table."""
    inputs = tuning_inputs(cfg, features, models, shards)
    specs, queries, docs, targets = inputs.specs, inputs.queries, inputs.docs, inputs.targets
    icfg = typed(cfg.index)
    tuned, indexes = {}, {}
    for key in index_keys(specs):
        start = time.perf_counter()
        key_docs, key_queries = inputs.index_vectors(key)
        result = tune(
            key_docs, key_queries, icfg, targets, shards, f"ann {key}", unservable=unsupported_reason
        )
        if result.chosen is None:
            log.warning(
                "ANN index %s: no operating point measured (schemes skipped: %s)", key, result.skipped
            )
            continue
        indexes[key] = result.chosen_index()
        faiss.write_index(indexes[key], str(out / f"{key}.faiss"))
        c = result.chosen
        log.info(
            "tuned ANN index %s: %s nprobe %d, recall@%d %s (exact %s), %.2f%% scanned%s, %.1f s",
            key, c.factory, c.nprobe, icfg.k, _fmt(c.recall), _fmt(result.exact["recall"]), 100 * c.scanned,
            "" if result.met else " (target not met)", time.perf_counter() - start,
        )  # fmt: skip
        tuned[key] = {
            "chosen": c.__dict__,
            "met": result.met,
            "table3": table3_markdown(result),
            "target": result.target,
            "points": result.to_dict()["points"],
            "stopped": result.stopped,
            "seconds": result.seconds,
        }
    table = evaluation_table(specs, queries, docs, targets, int(icfg.k), indexes)
    (out / "ensembles.md").write_text(evaluation_markdown(table))
    return {
        "retrievers": [s.to_dict() for s in specs],
        "skipped": inputs.skipped,
        "weights": inputs.weight_tables,
        "table": table,
        "operating_points": tuned,
        "tuning_sessions": len(targets),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
