"""Hand-made logs in a real DuckDB file, built from the log schema."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ebr.schema import DOCUMENTS, IMPRESSIONS, LOG_TABLES, SESSIONS, Table

T0 = datetime(2026, 1, 1, 12, 0)


def create_table(con: duckdb.DuckDBPyConnection, table: Table, frame: pd.DataFrame) -> None:
    cols = ", ".join(f"{c.name} {c.sql_type}" for c in table.columns)
    con.execute(f"CREATE TABLE {table.name} ({cols})")
    for c in table.column_names:
        if c not in frame:
            frame[c] = None
    con.register("_frame", frame[table.column_names])
    con.execute(f"INSERT INTO {table.name} SELECT * FROM _frame")
    con.unregister("_frame")


def session(sid: int, user: int, minutes: float, vertical: str, query: str) -> dict:
    return {
        "session_id": sid,
        "user_id": user,
        "ts": T0 + timedelta(minutes=minutes),
        "vertical": vertical,
        "query": query,
    }


@pytest.fixture
def hand_made_db(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """Searcher 1 fails on "jon smth", then finds doc 11 with "john smith" 3 minutes later; and other cases.

    sessions:  1 u1 t=0   people "jon smth"    no click (2 impr.) -> hard positive 11 (from 2)
               2 u1 t=3   people "john smith"  click 11
               3 u2 t=0   people "ann"         no impressions     -> no reformulation within window
               4 u2 t=90  people "anna lee"    click 12              (90 min later: outside 30)
               5 u3 t=0   groups "chess"       no click           -> same text retried: not a reformulation
               6 u3 t=2   groups "chess"       click 21
               7 u4 t=0   groups "hikng"       no click           -> other vertical click does not count
               8 u4 t=1   events "hiking"      click 31
               9 u5 t=0   people "bob"         no click           -> first clicked follow-up wins: 13, 14
              10 u5 t=5   people "bob ray"     click 13, 14
              11 u5 t=6   people "robert ray"  click 15
              12 u6 t=0   people "zed"         no click           -> its follow-up 13 is held out
              13 u6 t=4   people "zed q"       click 16
    """
    con = duckdb.connect(str(tmp_path / "hand.duckdb"))
    docs = [
        (11, "people"),
        (12, "people"),
        (13, "people"),
        (14, "people"),
        (15, "people"),
        (16, "people"),
        (17, "people"),
        (18, "people"),
        (21, "groups"),
        (22, "groups"),
        (23, "groups"),
        (31, "events"),
        (32, "events"),
    ]
    create_table(
        con,
        DOCUMENTS,
        pd.DataFrame(
            [
                {"doc_id": d, "vertical": v, "title": f"doc {d}", "created_at": T0, "popularity": 1.0}
                for d, v in docs
            ]
        ),
    )
    create_table(
        con,
        SESSIONS,
        pd.DataFrame(
            [
                session(1, 1, 0, "people", "jon smth"),
                session(2, 1, 3, "people", "John Smith"),
                session(3, 2, 0, "people", "ann"),
                session(4, 2, 90, "people", "anna lee"),
                session(5, 3, 0, "groups", "chess"),
                session(6, 3, 2, "groups", "Chess "),
                session(7, 4, 0, "groups", "hikng"),
                session(8, 4, 1, "events", "hiking"),
                session(9, 5, 0, "people", "bob"),
                session(10, 5, 5, "people", "bob ray"),
                session(11, 5, 6, "people", "robert ray"),
                session(12, 6, 0, "people", "zed"),
                session(13, 6, 4, "people", "zed q"),
            ]
        ),
    )
    imp = [
        (1, 17, 1, False),
        (1, 18, 2, False),
        (2, 11, 1, True),
        (2, 17, 2, False),
        (4, 12, 1, True),
        (5, 22, 1, False),
        (6, 21, 1, True),
        (7, 23, 1, False),
        (8, 31, 1, True),
        (9, 17, 1, False),
        (10, 13, 1, True),
        (10, 14, 2, True),
        (11, 15, 1, True),
        (12, 18, 1, False),
        (13, 16, 1, True),
    ]
    create_table(con, IMPRESSIONS, pd.DataFrame(imp, columns=["session_id", "doc_id", "position", "clicked"]))
    yield con
    con.close()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The simulator's tiny world (seed 7) and a DuckDB file holding its log tables, typed by the schema.

    Loaded straight from the world's Parquet files (ingestion and its contracts are tested in tests/ingest).
    """
    from ebr.simulator.world import simulate

    root = tmp_path_factory.mktemp("tiny_world")
    world = simulate("tiny", 7, root / "world")
    db = root / "ebr.duckdb"
    with duckdb.connect(str(db)) as con:
        for table in LOG_TABLES:
            cols = ", ".join(f"{c.name} {c.sql_type}" for c in table.columns)
            con.execute(f"CREATE TABLE {table.name} ({cols})")
            select = ", ".join(c.name for c in table.columns)
            con.execute(
                f"INSERT INTO {table.name} SELECT {select} FROM read_parquet(?)",
                [str(world / f"{table.name}.parquet")],
            )
    return world, db
