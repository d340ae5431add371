"""Build the engine index of a version: terms from documents.parquet, an nn field per trained faiss index.

For every key with a trained index, the documents' embeddings `embeddings/<key>.npy` are quantised by that
index's trained quantisers (the codes the ANN tuner measured: quantisation is deterministic) under the
engine's internal ids (row numbers of doc_ids.npy), with a hashtable direct map so realtime updates can remove
them (fast-scan PQ lists have none: the field rebuilds a list to remove; see quantized.py for the code types
served, checked before any document is added). The engine's `nn/<key>.faiss` is then the version's only copy
of each quantised index. An optional `payloads` column of documents.parquet, aligned with `terms`, gives the
terms' payloads (e.g. the frequencies of `text:` terms). An optional boolean `nn_indexed` column says which
documents enter the nn fields (index selection, ebr/selection/documents.py; absent: every document): the
others are indexed by their terms only. It is a rule of this batch build: a document added later with an
embedding enters them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from ebr.retrieval.documents import TermsInput
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.quantized import NNField

log = logging.getLogger(__name__)

ADD_BLOCK = 65_536


def build_engine_index(
    doc_ids: np.ndarray,
    doc_terms: Sequence[TermsInput],
    embeddings: Mapping[str, np.ndarray],
    trained: Mapping[str, faiss.Index],
    selected: np.ndarray | None = None,
) -> EngineIndex:
    """An in-memory engine index: internal id = row; `doc_terms` as `EngineIndex.from_documents` takes them
    (with payloads or not); `trained[key]` quantises the rows of `embeddings[key]` that `selected` (a bool
    per row; None: every row) marks."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    if selected is not None and (selected.dtype != bool or selected.shape != doc_ids.shape):
        raise ValueError(f"selected must be a bool per doc id, got {selected.dtype} {selected.shape}")
    fields = {}
    for key in sorted(trained):
        if key not in embeddings:
            raise ValueError(f"embedding key {key!r} has a faiss index but no embeddings")
        matrix = embeddings[key]
        if matrix.ndim != 2 or len(matrix) != len(doc_ids):
            raise ValueError(f"embeddings[{key!r}] has shape {matrix.shape} for {len(doc_ids)} doc ids")
        nn_field = NNField.empty_like(key, trained[key])
        if matrix.shape[1] != nn_field.d:
            raise ValueError(f"embeddings[{key!r}] has {matrix.shape[1]} dimensions, its index {nn_field.d}")
        for start in range(0, len(doc_ids), ADD_BLOCK):
            block = np.ascontiguousarray(matrix[start : start + ADD_BLOCK], dtype=np.float32)
            if not np.all(np.isfinite(block)):
                raise ValueError(f"embeddings[{key!r}] has NaN or infinite values near row {start}")
            rows = np.arange(start, start + len(block), dtype=np.int64)
            if selected is not None:
                keep = selected[start : start + len(block)]
                rows, block = rows[keep], block[keep]
            if len(rows):
                nn_field.add(rows, block)
        fields[key] = nn_field
    return EngineIndex.from_documents(doc_ids, doc_terms, fields)


def read_document_terms(path: Path, doc_ids: np.ndarray) -> list[list[str | tuple[str, float]]]:
    """The `terms` column of documents.parquet in the order of `doc_ids` (a missing document is an error),
    with the payloads of the optional aligned `payloads` column (float32, NaN: none) as (term, payload)
    pairs."""
    with_payloads = "payloads" in pq.read_schema(path).names
    table = pq.read_table(path, columns=["doc_id", "terms", *(["payloads"] if with_payloads else [])])
    terms = table.column("terms").to_pylist()
    payloads = table.column("payloads").to_pylist() if with_payloads else [None] * len(terms)
    row_of = {doc_id: row for row, doc_id in enumerate(table.column("doc_id").to_pylist())}
    rows = []
    for doc_id in doc_ids.tolist():
        if doc_id not in row_of:
            raise ValueError(f"{path}: doc_id {doc_id} of doc_ids.npy has no row")
        row = row_of[doc_id]
        rows.append(_paired(terms[row] or [], payloads[row], f"{path}: doc_id {doc_id}"))
    return rows


def read_nn_indexed(path: Path, doc_ids: np.ndarray) -> np.ndarray | None:
    """The optional `nn_indexed` column of documents.parquet in the order of `doc_ids` (None without it)."""
    if "nn_indexed" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path, columns=["doc_id", "nn_indexed"])
    flags = table.column("nn_indexed").to_numpy(zero_copy_only=False)
    if flags.dtype != bool:
        raise ValueError(f"{path}: nn_indexed must be boolean without nulls, got {flags.dtype}")
    rows = np.argsort(table.column("doc_id").to_numpy())
    place = rows[np.searchsorted(table.column("doc_id").to_numpy(), doc_ids, sorter=rows)]
    return flags[place]


def _paired(terms: list[str], payloads: list[float] | None, where: str) -> list[str | tuple[str, float]]:
    """Terms with their payloads as (term, payload) pairs (no payloads, or NaN: a plain term)."""
    if payloads is None:
        return list(terms)
    if len(payloads) != len(terms):
        raise ValueError(f"{where}: {len(terms)} terms but {len(payloads)} payloads")
    return [t if p is None or math.isnan(p) else (t, p) for t, p in zip(terms, payloads, strict=True)]


def build_engine(engine_dir: Path, trained: Mapping[str, faiss.Index]) -> Path:
    """Write the engine index of the version folder `engine_dir.parent` into `engine_dir` (empty or new):
    its terms from documents.parquet, and an (nn KEY) field per `trained` index, whose trained quantisers
    encode embeddings/<key>.npy (the only copy of each quantised index in a version).

    This is the `build_engine` hook of publication, called on the staging folder before the manifest.
    """
    started = time.perf_counter()
    version_dir = engine_dir.parent
    doc_ids = np.load(version_dir / "doc_ids.npy")
    doc_terms = read_document_terms(version_dir / "documents.parquet", doc_ids)
    selected = read_nn_indexed(version_dir / "documents.parquet", doc_ids)
    embeddings = {
        key: np.load(version_dir / "embeddings" / f"{key}.npy", mmap_mode="r")
        for key in trained
        if (version_dir / "embeddings" / f"{key}.npy").is_file()
    }
    index = build_engine_index(doc_ids, doc_terms, embeddings, trained, selected)
    engine_dir.mkdir(parents=True, exist_ok=True)
    if any(engine_dir.iterdir()):
        raise FileExistsError(f"{engine_dir}: not empty; an engine folder is written once")
    index.save(engine_dir)
    log.info(
        "engine index: %d documents (%d in the nn fields), %d terms, keys %s in %.1fs",
        index.live_count,
        index.live_count if selected is None else int(selected.sum()),
        len(index.terms),
        sorted(index.fields),
        time.perf_counter() - started,
    )
    return engine_dir
