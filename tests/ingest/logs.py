"""Hand-made log tables for the ingestion tests: a clean set, writers for every format, DB snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from omegaconf import OmegaConf

from ebr.home import conf_dir
from ebr.ingestion.ingest import ingest_logs
from ebr.ingestion.results import IngestResult
from ebr.schema import LOG_TABLES

T0 = pd.Timestamp("2024-03-01 09:00:00")


def clean_logs() -> dict[str, pd.DataFrame]:
    """A small, valid social search log: 4 users, 6 documents, 3 sessions with their impressions."""
    ints = lambda values: pd.array(values, dtype="Int64")  # noqa: E731
    return {
        "users": pd.DataFrame(
            {
                "user_id": [1, 2, 3, 4],
                "name": ["John Smith", "Ana Lopez", "Kasie Jones", "Wei Chen"],
                "city": ["Seattle", "Louisville", "Seattle", None],
                "region": ["WA", "KY", "WA", None],
                "country": ["US", "US", "US", None],
                "language": ["en", "es", "en", "zh"],
                "is_active": [True, True, False, True],
            }
        ),
        "friendships": pd.DataFrame({"user_id": [1, 2], "friend_id": [2, 3]}),
        "documents": pd.DataFrame(
            {
                "doc_id": [101, 102, 103, 104, 201, 301],
                "vertical": ["people", "people", "people", "people", "groups", "events"],
                "title": [
                    "John Smith",
                    "Ana Lopez",
                    "Kasie Jones",
                    "Wei Chen",
                    "Mini cooper club",
                    "Club meetup",
                ],
                "city": ["Seattle", "Louisville", "Seattle", None, "Louisville", "Louisville"],
                "region": ["WA", "KY", "WA", None, "KY", "KY"],
                "country": ["US", "US", "US", None, "US", "US"],
                "user_id": ints([1, 2, 3, 4, None, None]),
                "parent_doc_id": ints([None, None, None, None, None, 201]),
                "event_time": [pd.NaT] * 5 + [T0 + pd.Timedelta(days=30)],
                "created_at": [T0 - pd.Timedelta(days=d) for d in range(6)],
                "popularity": [1.0, 0.5, 0.0, 2.5, 10.0, 3.0],
            }
        ),
        "memberships": pd.DataFrame({"user_id": [1, 2], "doc_id": [201, 301]}),
        "sessions": pd.DataFrame(
            {
                "session_id": [1001, 1002, 1003],
                "user_id": [1, 2, 3],
                "ts": [T0 + pd.Timedelta(hours=h) for h in range(3)],
                "vertical": ["people", "groups", "people"],
                "query": ["john smith", "mini cooper", "kasie"],
                "city": ["Seattle", "Louisville", "Seattle"],
                "region": ["WA", "KY", "WA"],
                "country": ["US", "US", "US"],
                "language": ["en", "es", "en"],
            }
        ),
        "impressions": pd.DataFrame(
            {
                "session_id": [1001, 1001, 1001, 1002, 1002, 1003, 1003],
                "doc_id": [101, 102, 103, 201, 301, 103, 101],
                "position": [1, 2, 3, 1, 2, 1, 2],
                "clicked": [True, False, False, False, True, True, False],
            }
        ),
    }


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    """Write a frame as Parquet, CSV or JSONL according to the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        raise ValueError(path)
    return path


def write_logs(folder: Path, tables: dict[str, pd.DataFrame], fmt: str = "parquet") -> Path:
    for name, frame in tables.items():
        write_table(folder / f"{name}.{fmt}", frame)
    return folder


def load_cfg(**overrides: Any) -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "ingest" / "default.yaml"), resolve=True)
    return cfg | overrides


def snapshot(db: Path) -> dict[str, list[tuple]]:
    """Every log table and the quarantine, sorted: what an ingestion must leave untouched when it fails."""
    if not db.exists():
        return {}
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        return {
            t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in [*(t.name for t in LOG_TABLES), "quarantine"]
            if t in names
        }
    finally:
        con.close()


def query(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def runs(db: Path) -> list[dict[str, Any]]:
    rows = query(
        db, "SELECT run_id, status, error, counts_json, contracts_json FROM ingest_runs ORDER BY started_at"
    )
    return [
        {
            "run_id": r[0],
            "status": r[1],
            "error": r[2],
            "counts": json.loads(r[3]),
            "contracts": json.loads(r[4]),
        }
        for r in rows
    ]


def run_ingest(logs_dir: Path, db: Path, **overrides: Any) -> IngestResult:
    """ingest_logs with the shipped config, `overrides` replacing some of its settings."""
    return ingest_logs(logs_dir, db, load_cfg(**overrides))
