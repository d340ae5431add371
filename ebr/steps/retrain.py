"""The steps of the retrain flow as plain functions (ebr/flows/retrain.py wires them as Prefect tasks).

Each step writes its outputs under runs/<run_id>/<step>/ and returns a JSON-able summary (ebr/steps/resume.py
makes them resumable). In-memory objects (the FeatureSet) are rebuilt from the database on resume.

Held-out sessions (the latest data.heldout_sessions) are split in two, deterministically by session id:
the validation half chooses ensemble weights and tunes the ANN index; the gate half is seen by nothing but
the recall gate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ebr import home
from ebr.ann.quantize import IndexConfig, table3_markdown, tune
from ebr.evaluation.ensembles import (
    evaluation_markdown,
    evaluation_table,
    fill_weights,
    pick_served,
    specs_from_config,
)
from ebr.mining.rounds import run_mining
from ebr.models.export import QueryInput, export_query_tower, load_query_encoder
from ebr.models.features import FeatureSet, build_features, split_sessions
from ebr.models.training import embed_documents, embed_queries, load_module, train_tower
from ebr.retrieval.build import build_engine
from ebr.retrieval.retrievers import Retriever, RetrieverSpec, index_docs, index_queries
from ebr.retrieval.terms import document_terms
from ebr.steps.evaluate import evaluate, intents_path, load_intents, markdown_report
from ebr.steps.gate import GateConfig, GateResult, GateSessions, run_gate
from ebr.steps.publish import VersionPieces, publish_version

log = logging.getLogger(__name__)

EASY_MODEL = "unified"  # the unified tower on random negatives: mining round 0
MINED_MODEL = "unified_ohnm"  # the unified tower trained on offline hard negatives mixed with easy ones


def world_dir(cfg: DictConfig) -> Path:
    """The logs folder: data.logs_dir, or the simulated world of data.scale (simulated once, then reused)."""
    if cfg.data.logs_dir:
        path = Path(cfg.data.logs_dir).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"data.logs_dir: {path} is not a folder")
        return path
    path = home.worlds_dir() / f"{cfg.data.scale}-s{cfg.data.world_seed}"
    if not (path / "schema.json").is_file():
        from ebr.simulator.world import simulate

        simulate(str(cfg.data.scale), int(cfg.data.world_seed), path)
    return path


def features_for(cfg: DictConfig, db_path: Path) -> FeatureSet:
    split = split_sessions(db_path, int(cfg.data.heldout_sessions), float(cfg.eval.heldout_max_fraction))
    return build_features(db_path, cfg, split)


def gate_half(session_ids: np.ndarray, seed: int) -> np.ndarray:
    """True for held-out sessions reserved for the gate (a stable hash of seed and session id)."""
    digests = [hashlib.blake2b(f"{seed}:{int(s)}".encode(), digest_size=8).digest()[0] for s in session_ids]
    return np.array([d % 2 == 1 for d in digests], dtype=bool)


def heldout_parts(features: FeatureSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation session rows, gate session rows) of the held-out sessions."""
    rows = np.flatnonzero(features.heldout)
    to_gate = gate_half(features.session_ids[rows], seed)
    return rows[~to_gate], rows[to_gate]


def clicked_rows(features: FeatureSet, session_rows: np.ndarray) -> list[np.ndarray]:
    """Per session row, the document rows it clicked."""
    imp = features.impressions
    clicks = imp[imp["clicked"] & imp["session_row"].isin(session_rows)]
    by_session = clicks.groupby("session_row")["doc_row"].apply(np.asarray).to_dict()
    return [by_session.get(int(r), np.empty(0, np.int64)) for r in session_rows]


# --- training ---------------------------------------------------------------------------------------------


def train_models(cfg: DictConfig, features: FeatureSet, out: Path) -> dict[str, Any]:
    """Train every model of train.models, except the one mining round 0 trains (see `mine_and_train`);
    export each query tower and save its document embeddings."""
    trained = {}
    for name in [str(n) for n in cfg.train.models if str(n) != EASY_MODEL or not mines(cfg)]:
        result = train_tower(cfg, features, name, out / name)
        trained[name] = _export(result.checkpoint, features, out, name) | {"training": result.stats}
    return {"models": trained}


def mines(cfg: DictConfig) -> bool:
    """Whether mining trains beyond round 0 (offline hard negatives)."""
    return cfg.mining.negatives != "random" and int(cfg.mining.rounds) > 0


def mine_and_train(cfg: DictConfig, db_path: Path, features: FeatureSet, out: Path, run_id: str) -> dict:
    """Validated mining rounds: round 0 trains the unified tower on clicks and random (easy) negatives and is
    exported as `unified`; the last round's model, trained on offline hard negatives mixed with easy ones at
    mining.easy_hard_ratio, is exported as `unified_ohnm`."""
    report = run_mining(cfg, db_path, out, run_id, features)
    stages = report["stages"]
    models = {MINED_MODEL: _export(Path(report["checkpoint"]), features, out, MINED_MODEL)}
    if mines(cfg) and stages[0]["checkpoint"]:
        models[EASY_MODEL] = _export(Path(stages[0]["checkpoint"]), features, out, EASY_MODEL)
    for name, stage in ((EASY_MODEL, stages[0]), (MINED_MODEL, stages[-1])):
        if name in models and stage.get("training"):
            models[name]["training"] = stage["training"]
    tables = [
        {"stage": s["stage"], **{k: v for k, v in s["counts"].items() if not isinstance(v, dict)}}
        for s in stages
    ]
    return {"models": models, "tables": tables, "stages": stages}


def _export(checkpoint: Path, features: FeatureSet, out: Path, name: str) -> dict[str, Any]:
    module = load_module(checkpoint)
    tower = export_query_tower(
        module.query_tower, features.featurizer, out / "towers" / name, dict(module.hparams)
    )
    embeddings = out / "embeddings" / f"{name}.npy"
    embeddings.parent.mkdir(parents=True, exist_ok=True)
    np.save(embeddings, embed_documents(module, features))
    return {"checkpoint": str(checkpoint), "tower": str(tower), "embeddings": str(embeddings)}


def all_models(*steps: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: info for step in steps for name, info in step["models"].items()}


# --- evaluation -------------------------------------------------------------------------------------------


def evaluate_models(cfg: DictConfig, features: FeatureSet, models: Mapping[str, Any], out: Path) -> dict:
    """The towers' recall table (models x verticals x K) with the baselines, on all held-out sessions."""
    modules = {name: load_module(Path(info["checkpoint"])) for name, info in models.items()}
    report = evaluate(cfg, features, modules, load_intents(intents_path(cfg)))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown_report(report))
    return report


# --- ensembles and quantisation ---------------------------------------------------------------------------


def query_vectors(features: FeatureSet, models: Mapping[str, Any], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {n: embed_queries(load_module(Path(i["checkpoint"])), features, rows) for n, i in models.items()}


def doc_vectors(models: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.load(info["embeddings"]) for name, info in models.items()}


def ensembles_and_index(
    cfg: DictConfig, features: FeatureSet, models: Mapping[str, Any], out: Path
) -> dict[str, Any]:
    """Weights on the validation half, ANN tuning per retriever, the exact-vs-quantised table, the pick."""
    validation, _ = heldout_parts(features, int(cfg.seed))
    queries, docs = query_vectors(features, models, validation), doc_vectors(models)
    targets = clicked_rows(features, validation)
    keep = [i for i, t in enumerate(targets) if len(t)]
    queries = {k: v[keep] for k, v in queries.items()}
    targets = [targets[i] for i in keep]
    ecfg = OmegaConf.to_container(cfg.ensemble, resolve=True)
    specs, skipped = specs_from_config(ecfg, list(models))
    specs, weight_tables = fill_weights(
        specs, queries, docs, targets, int(ecfg["validation_k"]), ecfg["weight_grid"]
    )
    icfg = IndexConfig.from_mapping(OmegaConf.to_container(cfg.index, resolve=True))
    tuned, indexes = {}, {}
    for key in sorted({s.index_key for s in specs}):
        spec = next(s for s in specs if s.index_key == key)
        result = tune(index_docs(spec, docs), index_queries(spec, queries), icfg, targets)
        if result.chosen is None:
            continue
        indexes[key] = result.chosen_index()
        faiss.write_index(indexes[key], str(out / f"{key}.faiss"))
        tuned[key] = {"chosen": result.chosen.__dict__, "met": result.met, "table3": table3_markdown(result)}
    table = evaluation_table(specs, queries, docs, targets, int(icfg.k), indexes)
    served = pick_served(table, str(ecfg["serve"]))
    (out / "ensembles.md").write_text(evaluation_markdown(table))
    return {
        "retrievers": [s.to_dict() for s in specs],
        "skipped": skipped,
        "weights": weight_tables,
        "table": table,
        "operating_points": tuned,
        "served": served,
        "validation_sessions": len(targets),
    }


# --- gate and publication ---------------------------------------------------------------------------------


def gate_sessions(db_path: Path, features: FeatureSet, rows: np.ndarray) -> dict[str, GateSessions]:
    """The gate half as raw queries (what the query towers encode) and clicked doc ids, per vertical."""
    ids = features.session_ids[rows]
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.register("gate_ids", pd.DataFrame({"session_id": ids}))
        sessions = con.execute(
            "SELECT s.session_id, s.user_id, s.query, s.city, s.region, s.country, s.language, s.vertical "
            "FROM sessions s JOIN gate_ids USING (session_id) ORDER BY s.session_id"
        ).df()
        clicks = con.execute(
            "SELECT i.session_id, i.doc_id FROM impressions i JOIN gate_ids USING (session_id) "
            "WHERE i.clicked"
        ).df()
    targets = clicks.groupby("session_id")["doc_id"].apply(np.asarray).to_dict()
    out: dict[str, GateSessions] = {}
    for vertical, group in sessions.groupby("vertical"):
        group = group[group["session_id"].isin(targets)]
        queries = [
            QueryInput(
                r.query, _int(r.user_id), _str(r.city), _str(r.region), _str(r.country), _str(r.language)
            )
            for r in group.itertuples()
        ]
        out[str(vertical)] = GateSessions(queries, [targets[s] for s in group["session_id"]])
    return out


def candidate_retriever(
    features: FeatureSet, models: Mapping[str, Any], ensembles: Mapping[str, Any], index_dir: Path
) -> Retriever:
    spec = RetrieverSpec.from_dict(
        next(r for r in ensembles["retrievers"] if r["name"] == ensembles["served"])
    )
    index = faiss.read_index(str(index_dir / f"{spec.index_key}.faiss"))
    encoders = {key: load_query_encoder(Path(models[key]["tower"])) for key in spec.keys}
    return Retriever(spec, features.doc_ids, doc_vectors({k: models[k] for k in spec.keys}), index, encoders)


def gate(cfg: DictConfig, db_path: Path, features: FeatureSet, retriever: Retriever, out: Path) -> GateResult:
    """The candidate and the published version measured on the gate half; the verdict and its report."""
    gcfg = GateConfig.from_mapping(OmegaConf.to_container(cfg.gate, resolve=True))
    _, rows = heldout_parts(features, int(cfg.seed))
    return run_gate(retriever.search, gate_sessions(db_path, features, rows), gcfg, out)


def documents_with_terms(db_path: Path, doc_ids: np.ndarray) -> pd.DataFrame:
    """doc_id, vertical, title, terms (the engine's namespaced terms) in `doc_ids` order."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        docs = con.execute("SELECT doc_id, vertical, title, city, region, country FROM documents").df()
    docs = docs.set_index("doc_id").loc[doc_ids].reset_index()
    docs["terms"] = [
        document_terms(r.vertical, r.title, _str(r.city), _str(r.region), _str(r.country))
        for r in docs.itertuples()
    ]
    return docs[["doc_id", "vertical", "title", "terms"]]


def publish(
    cfg: DictConfig,
    db_path: Path,
    retriever: Retriever,
    models: Mapping[str, Any],
    ensembles: Mapping[str, Any],
    gate: GateResult,
    metrics: Mapping[str, Any],
    run_id: str,
) -> str:
    """Publish the candidate as a new version (atomic; serving flips to it) and return its name."""
    spec = retriever.spec
    pieces = VersionPieces(
        doc_ids=retriever.doc_ids,
        documents=documents_with_terms(db_path, retriever.doc_ids),
        embeddings=dict(retriever.doc_vectors),
        indexes={spec.index_key: retriever.index},
        towers={key: Path(models[key]["tower"]) for key in spec.keys},
        retriever=spec,
        build_engine=build_engine,
        index_points={spec.index_key: ensembles["operating_points"][spec.index_key]["chosen"]},
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    return publish_version(pieces, gate, metrics, config, run_id).version


def _int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _str(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
