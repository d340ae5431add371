"""Recall of the served version on a simulated world's evaluation sessions, through the engine: what a
searcher gets from `ebr serve`, against clicks and against the simulator's intents, per vertical and per query
form (misspelled, partial, ...).

    EBR_HOME=/tmp/ebr_small python benchmarks/served_world.py [--version v0001] [--out results.json]

The evaluation sessions are those of the version's own run (the split of the resolved config stored in its
manifest): never trained, tuned or gated on. Each session's request (its query, searcher and context, its
vertical) goes to `SearchService.search_many` with the vertical's published expression.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ebr import home, registry
from ebr.config import load_config
from ebr.models.features import split_from_config
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.steps.evaluate import intents_path

KS = (1, 10, 50, 100)


def _value(v: object) -> object:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or pd.isna(v) else v


def evaluation_requests(db_path: Path, session_ids: np.ndarray) -> pd.DataFrame:
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.register("_ids", pd.DataFrame({"session_id": session_ids}))
        return con.execute("SELECT s.* FROM sessions s JOIN _ids USING (session_id) ORDER BY session_id").df()


def clicked(db_path: Path, session_ids: np.ndarray) -> dict[int, set[int]]:
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.register("_ids", pd.DataFrame({"session_id": session_ids}))
        rows = con.execute(
            "SELECT session_id, doc_id FROM impressions JOIN _ids USING (session_id) WHERE clicked"
        ).fetchall()
    out: dict[int, set[int]] = {}
    for s, d in rows:
        out.setdefault(int(s), set()).add(int(d))
    return out


def recall_table(
    found: dict[int, list[int]], targets: dict[int, set[int]], groups: dict[int, list[str]]
) -> dict:
    """recall@K per group (a session may be in several: its vertical and "all", or its query-form tags)."""
    out: dict[str, dict[str, float]] = {}
    members: dict[str, list[int]] = {}
    for s, names in groups.items():
        if targets.get(s):
            for name in names:
                members.setdefault(name, []).append(s)
    for name, sessions in sorted(members.items()):
        out[name] = {
            str(k): round(
                float(np.mean([len(targets[s] & set(found[s][:k])) / len(targets[s]) for s in sessions])), 4
            )
            for k in KS
        } | {"sessions": len(sessions)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="a published version (default: the served one)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--dataset", default=None, help="the dataset (default: the config's data.dataset)")
    args = parser.parse_args(argv)
    dataset = args.dataset or str(load_config().data.dataset)
    version_dir = (
        home.versions_dir(dataset) / args.version if args.version else registry.served_version_dir(dataset)
    )
    manifest = registry.verify_version(version_dir)
    cfg = OmegaConf.create(manifest["config"])
    db = home.db_path(dataset)
    split = split_from_config(db, cfg)
    ids = split.evaluate_session_ids
    sessions = evaluation_requests(db, ids)
    requests = [
        SearchRequest(
            vertical=r.vertical,
            query_text=r.query,
            searcher_id=_value(r.user_id) and int(r.user_id),
            context={c: _value(getattr(r, c)) for c in ("city", "region", "country", "language")},
            limit=max(KS),
        )
        for r in sessions.itertuples()
    ]
    service = SearchService.open(version_dir, load_engine_config(), writable=False, dataset=dataset)
    try:
        responses = service.search_many(requests)
    finally:
        service.close()
    found = {int(s): r.hits.doc_ids.tolist() for s, r in zip(sessions["session_id"], responses, strict=True)}
    by_vertical = {
        int(s): [str(v), "all"] for s, v in zip(sessions["session_id"], sessions["vertical"], strict=True)
    }
    results = {
        "version": manifest["version"],
        "sessions": len(found),
        "took_ms_mean": round(float(np.mean([r.took_ms for r in responses])), 3),
        "clicks": recall_table(found, clicked(db, ids), by_vertical),
    }
    path = intents_path(cfg)
    if path.is_file():
        intents = pd.read_parquet(path)
        intents = intents[intents["session_id"].isin(ids)]
        targets = {
            int(s): {int(d)} for s, d in zip(intents["session_id"], intents["target_doc_id"], strict=True)
        }
        forms = {
            int(s): str(f).split("+")
            for s, f in zip(intents["session_id"], intents["query_form"], strict=True)
        }
        results["intents"] = recall_table(found, targets, by_vertical)
        results["intents_by_query_form"] = recall_table(found, targets, forms)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
