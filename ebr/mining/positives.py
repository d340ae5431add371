"""Positives of the training sessions, in DuckDB (paper §2.4, §6.1): clicks, impressions and hard positives
from failed sessions.
"""

from __future__ import annotations

from typing import Literal

import duckdb
import numpy as np
import pandas as pd

PositiveStrategy = Literal["clicks", "impressions", "clicks+hard", "impressions+hard", "hard"]
POSITIVE_STRATEGIES: tuple[str, ...] = ("clicks", "impressions", "clicks+hard", "impressions+hard", "hard")
POSITIVE_COLUMNS = ["session_id", "doc_id", "vertical", "kind", "source_session_id"]


def register_train_ids(con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray) -> None:
    """Register the training session ids as the DuckDB view `_mine_train_ids` the mining queries join."""
    con.register("_mine_train_ids", pd.DataFrame({"session_id": np.asarray(train_session_ids, np.int64)}))


def click_positives(con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray) -> pd.DataFrame:
    """One positive per clicked impression of a training session."""
    register_train_ids(con, train_session_ids)
    return con.execute(
        """
        SELECT DISTINCT i.session_id, i.doc_id, s.vertical, 'click' AS kind,
               CAST(NULL AS BIGINT) AS source_session_id
        FROM impressions i JOIN sessions s USING (session_id) JOIN _mine_train_ids t USING (session_id)
        WHERE i.clicked
        ORDER BY i.session_id, i.doc_id
        """
    ).df()


def impression_positives(con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray) -> pd.DataFrame:
    """One positive per impression (clicked or not) of a training session (as good as clicks, paper §2.4)."""
    register_train_ids(con, train_session_ids)
    return con.execute(
        """
        SELECT i.session_id, i.doc_id, s.vertical,
               CASE WHEN bool_or(i.clicked) THEN 'click' ELSE 'impression' END AS kind,
               CAST(NULL AS BIGINT) AS source_session_id
        FROM impressions i JOIN sessions s USING (session_id) JOIN _mine_train_ids t USING (session_id)
        GROUP BY i.session_id, i.doc_id, s.vertical
        ORDER BY i.session_id, i.doc_id
        """
    ).df()


def hard_positives(
    con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray, window_minutes: float
) -> pd.DataFrame:
    """Positives for failed sessions (paper §6.1).

    A failed session (no click) of a searcher is followed, within `window_minutes`, by a reformulated session
    (different normalised query text) of the same searcher and vertical with at least one click. The clicked
    documents of the first such session become positives of the failed session; `source_session_id` names
    the session they come from. Both sessions must be training sessions.
    """
    if window_minutes <= 0:
        raise ValueError(f"mining.hard_positive_window_minutes must be > 0, got {window_minutes}")
    register_train_ids(con, train_session_ids)
    return con.execute(
        """
        WITH s AS (
            SELECT s.session_id, s.user_id, s.vertical, s.ts, lower(trim(s.query)) AS q,
                   coalesce(c.clicks, 0) > 0 AS clicked
            FROM sessions s JOIN _mine_train_ids t USING (session_id)
            LEFT JOIN (
                SELECT session_id, count(*) AS clicks FROM impressions WHERE clicked GROUP BY session_id
            ) c USING (session_id)
        ),
        follow AS (
            SELECT f.session_id, f.vertical, ok.session_id AS source_session_id
            FROM s f JOIN s ok
              ON ok.user_id = f.user_id AND ok.vertical = f.vertical AND ok.clicked AND ok.q <> f.q
             AND ok.ts > f.ts AND ok.ts <= f.ts + to_microseconds(CAST(? * 60e6 AS BIGINT))
            WHERE NOT f.clicked
            QUALIFY row_number() OVER (PARTITION BY f.session_id ORDER BY ok.ts, ok.session_id) = 1
        )
        SELECT DISTINCT f.session_id, i.doc_id, f.vertical, 'hard_positive' AS kind, f.source_session_id
        FROM follow f JOIN impressions i ON i.session_id = f.source_session_id AND i.clicked
        ORDER BY f.session_id, i.doc_id
        """,
        [float(window_minutes)],
    ).df()


def positives(
    con: duckdb.DuckDBPyConnection,
    train_session_ids: np.ndarray,
    strategy: PositiveStrategy,
    hard_positive_window_minutes: float = 30.0,
) -> pd.DataFrame:
    """The positives of `strategy` (clicks | impressions | clicks+hard | impressions+hard | hard).

    Columns: session_id, doc_id, vertical, kind (click | impression | hard_positive), source_session_id.
    """
    if strategy not in POSITIVE_STRATEGIES:
        raise ValueError(f"mining.positives must be one of {POSITIVE_STRATEGIES}, got {strategy!r}")
    base, _, extra = strategy.partition("+")
    parts = []
    if base == "clicks":
        parts.append(click_positives(con, train_session_ids))
    elif base == "impressions":
        parts.append(impression_positives(con, train_session_ids))
    if base == "hard" or extra == "hard":
        parts.append(hard_positives(con, train_session_ids, hard_positive_window_minutes))
    out = pd.concat(parts, ignore_index=True)
    # A failed session has no click, so hard positives never collide with clicks; impressions of a failed
    # session may coincide with a hard positive: keep the hard_positive row.
    out = out.sort_values(["session_id", "doc_id", "kind"], key=_kind_priority).drop_duplicates(
        ["session_id", "doc_id"], keep="first"
    )
    return out.reset_index(drop=True)[POSITIVE_COLUMNS].astype({"session_id": "int64", "doc_id": "int64"})


def _kind_priority(col: pd.Series) -> pd.Series:
    if col.name != "kind":
        return col
    return col.map({"hard_positive": 0, "click": 1, "impression": 2})
