"""Ensembles (§6.2): retrievers from config, ensemble weights chosen on the tuning sessions, and the table
comparing every single model, ensemble and cascade with exact KNN and through its quantised index (ensemble
gains can shrink once quantised). What is served per vertical is chosen through the engine itself
(ebr/retrieval/calibration.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import faiss
import numpy as np

from ebr.ann.knn import as_float32, exact_knn, recall_at_k
from ebr.models.ensembles import cascade_search, choose_weights, l2_normalize
from ebr.retrieval.retrievers import RetrieverSpec, index_docs, index_queries, single


def specs_from_config(
    cfg: Mapping[str, Any], available: Sequence[str]
) -> tuple[list[RetrieverSpec], list[dict[str, str]]]:
    """Single models, weighted concatenations and cascades of conf/ensemble, keeping those whose models exist.

    Returns (specs, skipped) where skipped names each configured retriever lacking a model and why.
    """
    specs, skipped = [], []
    candidates = [single(key) for key in (cfg["models"] or available)]
    candidates += [
        RetrieverSpec(
            name=e["name"], kind="ensemble", keys=tuple(e["keys"]), weights=tuple(e.get("weights") or ())
        )
        for e in cfg.get("weighted_concat") or ()
    ]
    candidates += [
        RetrieverSpec(name=c["name"], kind="cascade", keys=(c["first"], c["second"]), n=int(c["n"]))
        for c in cfg.get("cascades") or ()
    ]
    for spec in candidates:
        missing = [k for k in spec.keys if k not in available]
        if missing:
            skipped.append({"name": spec.name, "reason": f"no embeddings for model(s) {missing}"})
        else:
            specs.append(spec)
    return specs, skipped


def fill_weights(
    specs: Sequence[RetrieverSpec],
    query_vectors: Mapping[str, np.ndarray],
    doc_vectors: Mapping[str, np.ndarray],
    targets: Sequence[np.ndarray],
    k: int,
    grid: Sequence[float],
) -> tuple[list[RetrieverSpec], dict[str, dict[str, Any]]]:
    """Choose the weights of every ensemble without configured weights on the validation split.

    `targets` are document rows. Returns the specs (weights filled) and, per ensemble, its grid table.
    """
    out, tables = [], {}
    for spec in specs:
        if spec.kind == "ensemble" and not spec.weights:
            choice = choose_weights(
                [query_vectors[k_] for k_ in spec.keys],
                [doc_vectors[k_] for k_ in spec.keys],
                targets,
                k,
                grid,
            )
            spec = RetrieverSpec(spec.name, spec.kind, spec.keys, weights=choice.weights)
            tables[spec.name] = {
                "k": k,
                "weights": list(choice.weights),
                "recall": choice.recall,
                "grid": choice.table,
            }
        out.append(spec)
    return out, tables


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


def evaluation_table(
    specs: Sequence[RetrieverSpec],
    query_vectors: Mapping[str, np.ndarray],
    doc_vectors: Mapping[str, np.ndarray],
    targets: Sequence[np.ndarray],
    k: int,
    indexes: Mapping[str, faiss.Index] | None = None,
) -> list[dict[str, Any]]:
    """recall@k of every retriever with exact KNN and through its quantised index (when `indexes` has its
    index_key). `targets` are document rows."""
    rows = []
    for spec in specs:
        exact = recall_at_k(search_rows(spec, query_vectors, doc_vectors, k), targets, k)
        index = (indexes or {}).get(spec.index_key)
        quantised = (
            recall_at_k(search_rows(spec, query_vectors, doc_vectors, k, index), targets, k)
            if index is not None
            else None
        )
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "keys": list(spec.keys),
                "weights": list(spec.weights),
                "n": spec.n,
                "k": k,
                "recall_exact": exact,
                "recall_quantised": quantised,
            }
        )
    return rows


def evaluation_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| retriever | kind | recall@K exact KNN | recall@K quantised | change |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        exact, quantised = r["recall_exact"], r["recall_quantised"]
        detail = {"ensemble": f" w={r['weights']}", "cascade": f" n={r['n']}"}.get(r["kind"], "")
        after = "-" if quantised is None else f"{100 * quantised:.2f}%"
        change = "-" if quantised is None else f"{100 * (quantised - exact):+.2f}"
        lines.append(f"| {r['name']}{detail} | {r['kind']} | {100 * exact:.2f}% | {after} | {change} |")
    return "\n".join(lines) + "\n"
