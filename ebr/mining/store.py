"""Mined training data in DuckDB, versioned per run and round, with the configuration that made it.

Tables (docs/mining.md): `mined_runs` (one row per mining round: status, config, counts, contract report),
`mined_positives` and `mined_negatives` (rows keyed by run_id and round). A round is written in one
transaction, so a crash leaves the previous rounds intact and never half a round; a round's status says
whether its contracts passed (training gets the validated table in memory, ebr/mining/rounds.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from ebr.mining.negatives import NEGATIVE_COLUMNS
from ebr.mining.positives import POSITIVE_COLUMNS

DDL = (
    """CREATE TABLE IF NOT EXISTS mined_runs (
        run_id VARCHAR NOT NULL, round INTEGER NOT NULL, created_at TIMESTAMP NOT NULL,
        status VARCHAR NOT NULL, config_json VARCHAR NOT NULL, counts_json VARCHAR NOT NULL,
        contracts_json VARCHAR NOT NULL,
        PRIMARY KEY (run_id, round))""",
    """CREATE TABLE IF NOT EXISTS mined_positives (
        run_id VARCHAR NOT NULL, round INTEGER NOT NULL, session_id BIGINT NOT NULL, doc_id BIGINT NOT NULL,
        vertical VARCHAR, kind VARCHAR NOT NULL, source_session_id BIGINT)""",
    """CREATE TABLE IF NOT EXISTS mined_negatives (
        run_id VARCHAR NOT NULL, round INTEGER NOT NULL, session_id BIGINT NOT NULL,
        positive_doc_id BIGINT NOT NULL, doc_id BIGINT NOT NULL, kind VARCHAR NOT NULL, rank INTEGER,
        score REAL)""",
)


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    for statement in DDL:
        con.execute(statement)


def save_round(
    db_path: Path,
    run_id: str,
    round_: int,
    config: dict[str, Any],
    counts: dict[str, Any],
    contracts: dict[str, Any],
    positives: pd.DataFrame | None,
    negatives: pd.DataFrame | None,
    status: str = "ok",
) -> None:
    """Write one round atomically. A failed round (contracts broken) is recorded without its rows."""
    with duckdb.connect(str(db_path)) as con:
        ensure_tables(con)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("DELETE FROM mined_runs WHERE run_id = ? AND round = ?", [run_id, round_])
            for table in ("mined_positives", "mined_negatives"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND round = ?", [run_id, round_])
            if status == "ok":
                _insert(con, "mined_positives", run_id, round_, positives[POSITIVE_COLUMNS])
                _insert(con, "mined_negatives", run_id, round_, negatives[NEGATIVE_COLUMNS])
            con.execute(
                "INSERT INTO mined_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    round_,
                    datetime.now(UTC).replace(tzinfo=None),
                    status,
                    json.dumps(config, sort_keys=True, default=str),
                    json.dumps(counts, sort_keys=True, default=str),
                    json.dumps(contracts, sort_keys=True, default=str),
                ],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _insert(
    con: duckdb.DuckDBPyConnection, table: str, run_id: str, round_: int, frame: pd.DataFrame
) -> None:
    con.register("_mined_rows", frame)
    cols = ", ".join(frame.columns)
    con.execute(
        f"INSERT INTO {table} (run_id, round, {cols}) SELECT ?, ?, {cols} FROM _mined_rows", [run_id, round_]
    )
    con.unregister("_mined_rows")


def load_round(
    db_path: Path, run_id: str, round_: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(positives, negatives, run row) of a validated round: the latest `ok` round when round_ is None."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        if round_ is None:
            row = con.execute(
                "SELECT max(round) FROM mined_runs WHERE run_id = ? AND status = 'ok'", [run_id]
            ).fetchall()
            round_ = row[0][0]
        run = con.execute(
            "SELECT * FROM mined_runs WHERE run_id = ? AND round = ? AND status = 'ok'", [run_id, round_]
        ).df()
        if run.empty:
            raise LookupError(f"{db_path}: no validated mined round {round_} for run {run_id!r}")
        order = {
            "mined_positives": "session_id, doc_id",
            "mined_negatives": "session_id, positive_doc_id, kind, doc_id",
        }
        frames = [
            con.execute(
                f"SELECT * EXCLUDE (run_id, round) FROM {t} WHERE run_id = ? AND round = ? ORDER BY {o}",
                [run_id, round_],
            ).df()
            for t, o in order.items()
        ]
    record = run.iloc[0].to_dict()
    for key in ("config_json", "counts_json", "contracts_json"):
        record[key.removesuffix("_json")] = json.loads(record.pop(key))
    frames[1]["rank"] = frames[1]["rank"].astype("Int32")
    return frames[0], frames[1], record
