"""Step `serving`: what each vertical serves, chosen and calibrated through the engine, and the candidate
version staged for the gate.

1. stage a pool version (run_dir/serving/pool) holding an (nn) field for every tuned key and every query
   tower: the engine every retriever can be served from;
2. per vertical with tuning sessions: the exact top-K recall of every retriever (its reference); calibrate,
   through the pool's SearchService, the best retriever and the best single model (ebr/retrieval/
   calibration.py); serve the better (so the served retriever is never worse than the best single model on
   the vertical's tuning sessions); `serving.serve: <name>` forces one retriever instead;
3. stage the candidate (run_dir/serving/candidate) with only what the chosen templates read, its manifest's
   `serving` section holding each vertical's expression and calibration: the folder the gate measures and
   publication promotes.

Index selection (conf/index_selection, ebr/selection/documents.py) is evaluated first: the pool and the
candidate hold in their (nn) fields only the selected documents (documents.parquet's `nn_indexed`, the
manifest's `index_selection`), and the exact references are taken over those, so calibration measures what
is served. The quantisers stay those the ANN step trained on every document (the embedding space of the
whole vertical, which documents added later are encoded in too).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ebr.config import CalibrationConfig, typed
from ebr.evaluation.ensembles import search_rows
from ebr.evaluation.gate import GateConfig
from ebr.io import atomic_write_text
from ebr.models.features import FeatureSet
from ebr.registry.publication import VersionPieces, data_version, stage_version
from ebr.retrieval.build import build_engine
from ebr.retrieval.calibration import Template, calibrate, target_radii
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.retrievers import RetrieverSpec, expression, index_docs, index_queries
from ebr.retrieval.service import SearchService
from ebr.retrieval.terms import document_terms
from ebr.runners import SERIAL, Shards
from ebr.selection.documents import Selection, select_documents
from ebr.steps.ensembles import clicked_rows, doc_vectors, index_keys, query_vectors
from ebr.steps.sessions import session_requests


def documents_with_terms(db_path: Path, features: FeatureSet) -> pd.DataFrame:
    """doc_id, vertical, title, terms and payloads (the engine's terms; a `text:` term's payload is its
    frequency, NaN for 1 and for the other terms) in features.doc_ids order."""
    roles = features.stats["fields"]
    with duckdb.connect(str(db_path), read_only=True) as con:
        docs = con.execute("SELECT * FROM documents ORDER BY doc_id").df()
    docs = docs.set_index("doc_id").loc[features.doc_ids].reset_index()
    terms, payloads = [], []
    for row, (vertical, text) in enumerate(zip(docs["vertical"], features.doc_texts, strict=True)):
        location = roles.get(vertical, {}).get("location") or ()
        place = [_str(docs[c].iat[row]) for c in location] or [None, None, None]
        pairs = document_terms(vertical, text, *place)
        terms.append([p if isinstance(p, str) else p[0] for p in pairs])
        payloads.append([math.nan if isinstance(p, str) else float(p[1]) for p in pairs])
    return pd.DataFrame(
        {
            "doc_id": docs["doc_id"].to_numpy(np.int64),
            "vertical": docs["vertical"],
            "title": docs["title"],
            "terms": terms,
            "payloads": payloads,
        }
    )


def _str(value: Any) -> str | None:
    return (
        None
        if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value)
        else str(value)
    )


def pieces_for(
    features: FeatureSet,
    documents: pd.DataFrame,
    models: Mapping[str, Any],
    specs: Sequence[RetrieverSpec],
    index_dir: Path,
    operating_points: Mapping[str, Any],
    serving: Mapping[str, Any] | None = None,
    selection: Selection | None = None,
) -> VersionPieces:
    """A version serving `specs`: an (nn) field per key they search or re-rank with (holding the documents
    `selection` marks; None: every one), their query towers."""
    docs = doc_vectors({k: v for k, v in models.items() if k in {m for s in specs for m in s.keys}})
    embeddings = dict(docs)
    for spec in specs:
        if spec.kind == "ensemble":
            embeddings[spec.name] = index_docs(spec, docs)
    keys = index_keys(list(specs))
    return VersionPieces(
        doc_ids=features.doc_ids,
        documents=documents if selection is None else documents.assign(nn_indexed=selection.mask),
        embeddings={k: v for k, v in embeddings.items() if k in keys or k in docs},
        indexes={k: faiss.read_index(str(index_dir / f"{k}.faiss")) for k in keys},
        towers={k: Path(models[k]["tower"]) for k in sorted({m for s in specs for m in s.keys})},
        retrievers={s.name: s.to_dict() for s in specs},
        serving=dict(serving or {}),
        build_engine=build_engine,
        index_points={k: operating_points[k]["chosen"] for k in keys if k in operating_points},
        index_selection=selection.summary() if selection is not None else {},
    )


def index_selection(cfg: DictConfig, db_path: Path, features: FeatureSet) -> Selection:
    """The documents entering the (nn) fields by `index_selection.verticals` (ebr/selection/documents.py)."""
    verticals = np.asarray(features.verticals, dtype=object)[features.doc_vertical]
    return select_documents(db_path, features.doc_ids, verticals, typed(cfg.index_selection).verticals)


def _finite(value: Any) -> Any:
    """`value` with every NaN float as None (the manifest is strict JSON)."""
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _restage(
    folder: Path,
    pieces: VersionPieces,
    run_id: str,
    cfg: DictConfig,
    db_path: Path,
    metrics: Mapping[str, Any] | None = None,
) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    stage_version(pieces, folder, dict(metrics or {}), config, run_id, data_version(db_path))


def references(
    features: FeatureSet,
    models: Mapping[str, Any],
    specs: Sequence[RetrieverSpec],
    vertical: str,
    k: int,
    part: str = "tune",
    shards: Shards = SERIAL,
    selected: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Exact top-k recall of every spec on the vertical's sessions of `part` (within the vertical's
    documents that `selected` marks, None: all; a target outside them is a miss), and per spec the cosine
    distances between those queries and their targets inside them."""
    code = features.verticals.index(vertical)
    rows = features.part_rows(part)
    rows = rows[features.session_vertical[rows] == code]
    targets = clicked_rows(features, rows)
    keep = [i for i, t in enumerate(targets) if len(t)]
    rows, targets = rows[keep], [targets[i] for i in keep]
    pool = np.flatnonzero((features.doc_vertical == code) & (True if selected is None else selected))
    position = np.full(len(features.doc_ids), -1, np.int64)
    position[pool] = np.arange(len(pool))
    targets = [position[t] for t in targets]
    queries = query_vectors(features, models, rows, shards)
    docs = {n: v[pool] for n, v in doc_vectors(models).items()}
    recall, distances = {}, {}
    for spec in specs:
        found = search_rows(spec, queries, docs, min(k, len(pool)))
        recall[spec.name] = float(
            np.mean([np.isin(t, f[:k]).mean() for f, t in zip(found, targets, strict=True)])
        )
        q, d = index_queries(spec, queries), index_docs(spec, docs)
        inside = [d[t[t >= 0]] @ q[i] for i, t in enumerate(targets)]
        sims = np.concatenate(inside) if inside else np.empty(0)
        distances[spec.name] = 1.0 - sims
    return recall, distances


def choose_serving(
    cfg: DictConfig,
    db_path: Path,
    features: FeatureSet,
    models: Mapping[str, Any],
    ensembles: Mapping[str, Any],
    index_dir: Path,
    out: Path,
    run_id: str,
    shards: Shards = SERIAL,
    evaluation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Stage the pool, calibrate and choose per vertical, stage the candidate (see the module docstring);
    the candidate's manifest `metrics` hold the run's `evaluation` recall table, the retrievers' table on the
    tuning sessions, the ANN operating points and the calibration."""
    specs = [RetrieverSpec.from_dict(r) for r in ensembles["retrievers"]]
    by_name = {s.name: s for s in specs}
    forced = str(cfg.serving.serve)
    if forced != "best" and forced not in by_name:
        raise ValueError(f"serving.serve={forced!r} is not one of the evaluated retrievers {sorted(by_name)}")
    selection = index_selection(cfg, db_path, features)
    documents = documents_with_terms(db_path, features)
    points = ensembles["operating_points"]
    specs = [s for s in specs if all(k in points for k in index_keys([s]))]  # servable: their keys tuned
    pool = pieces_for(features, documents, models, specs, index_dir, points, selection=selection)
    _restage(out / "pool", pool, run_id, cfg, db_path)
    gate = GateConfig.from_mapping(OmegaConf.to_container(cfg.gate, resolve=True), features.verticals)
    sessions = session_requests(db_path, features, "tune")
    calibration: CalibrationConfig = typed(cfg.serving)
    engine_cfg = load_engine_config()
    service = SearchService.open(out / "pool", engine_cfg, writable=False, dataset=cfg.data.dataset)
    chosen: dict[str, Template] = {}
    report: dict[str, Any] = {}
    tried: dict[str, Any] = {}
    try:
        for vertical in features.verticals:
            k = gate.verticals[vertical].k
            if vertical not in sessions:
                report[vertical] = {"calibrated": False, "reason": "no tuning sessions with clicks"}
                continue
            recall, distances = references(
                features, models, specs, vertical, k, shards=shards, selected=selection.mask
            )
            if forced != "best":
                names = [forced]
            else:
                best = max(recall, key=lambda n: (recall[n], n))
                single = max((s.name for s in specs if s.kind == "single"), key=lambda n: (recall[n], n))
                names = sorted({best, single})
            radii = {n: target_radii(distances[n]) for n in names}
            templates = [
                calibrate(
                    service, by_name[n], vertical, sessions[vertical], recall[n], radii[n], k, calibration
                )
                for n in names
            ]
            score = (
                (lambda t: (t.ndcg, t.recall)) if calibration.metric == "ndcg" else (lambda t: (t.recall,))
            )
            chosen[vertical] = max(templates, key=score)
            report[vertical] = {
                "calibrated": True,
                "exact_recall": recall,
                "candidates": [t.to_dict(tried=False) for t in templates],
                "chosen": chosen[vertical].retriever,
            }
            tried[vertical] = [t.to_dict() for t in templates]
    finally:
        service.close()
    if not chosen:
        raise ValueError("no vertical has tuning sessions with clicks: nothing to calibrate the templates on")
    fallback = max(chosen.values(), key=lambda t: (t.recall, t.retriever))
    serving_verticals = {}
    for vertical in features.verticals:
        t = chosen.get(vertical)
        if t is None:  # no tuning sessions: the best retriever elsewhere, with its parameters
            spec = by_name[fallback.retriever]
            expr = expression(spec, vertical, fallback.nprobe, radius=fallback.radius, fusion=fallback.fusion)
            serving_verticals[vertical] = {
                "retriever": spec.name,
                "key": spec.index_key,
                "expr": expr,
                "calibrated": False,
            }
        else:
            serving_verticals[vertical] = {"calibrated": True} | t.to_dict(tried=False)
    used = sorted({v["retriever"] for v in serving_verticals.values()})
    serving = {"default_vertical": _most_searched(features), "verticals": serving_verticals}
    used_specs = [by_name[n] for n in used]
    pieces = pieces_for(features, documents, models, used_specs, index_dir, points, serving, selection)
    metrics = _finite(
        {
            "recall": (evaluation or {}).get("recall"),
            "recall_intent": (evaluation or {}).get("recall_intent"),
            "retrievers": ensembles.get("table"),
            "ann_operating_points": {k: p["chosen"] for k, p in points.items()},
            "calibration": report,
        }
    )
    _restage(out / "candidate", pieces, run_id, cfg, db_path, metrics)
    shutil.rmtree(out / "pool")
    atomic_write_text(out / "calibration.json", json.dumps(tried, indent=2, default=str))
    return {
        "candidate": str(out / "candidate"),
        "serving": serving,
        "retrievers": used,
        "calibration": report,
        "tuning_sessions": {v: len(s.requests) for v, s in sessions.items()},
        "index_selection": selection.summary(),
    }


def _most_searched(features: FeatureSet) -> str:
    counts = np.bincount(
        features.session_vertical[features.session_vertical >= 0], minlength=len(features.verticals)
    )
    return features.verticals[int(np.argmax(counts))]
