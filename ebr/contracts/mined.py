"""Data contracts for mined training data: every mined table is validated before training reads it.

Suites (ebr/contracts/suites/mined_*.json) run in Great Expectations on pandas batches. Rules that span
tables (a negative that is a positive of its query, an unknown id, a held-out session, another vertical) are
computed in DuckDB as per-row check columns holding the reason a row fails (NULL when it passes), which the
suites expect to be null, as the log-table suites do. Configured values (the rank window, the easy:hard
ratio, count bounds) enter the committed suites as `$PARAMETER`s. A failure raises MinedContractError naming
the table, the rule and the failing rows. The results, passed or failed, are published to the Data Docs of
the database the connection reads (ebr/contracts/docs.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ebr.contracts.docs import Validation, load_suite, publish_or_warn

SHOWN_ROWS = 5  # failing rows named in an error message, per rule


class MinedContractError(RuntimeError):
    """A mined table broke its contract; the message names the table, the rule and the failing rows."""

    def __init__(self, failures: list[dict[str, Any]], data_docs: str | None = None):
        self.failures = failures
        self.data_docs = data_docs  # the Data Docs index.html showing the failed validation
        lines = [f"{f['table']}: {f['rule']}: {f['detail']}" for f in failures]
        super().__init__("mined data contract failed: " + "; ".join(lines))


@dataclass(frozen=True)
class MinedPromise:
    """What the mining configuration promises about its tables (from conf/mining)."""

    negatives: str  # random | hard | mixed
    random_per_positive: int
    hard_per_positive: int
    easy_hard_ratio: float
    window: tuple[int, int]
    min_positives: int = 1


def positives_checks(
    con: duckdb.DuckDBPyConnection, positives: pd.DataFrame, heldout: np.ndarray
) -> pd.DataFrame:
    """The positives with row_id and one reason-or-NULL column per cross-table rule."""
    _register(con, positives, heldout)
    return con.execute(
        """
        SELECT p.row_id, p.session_id, p.doc_id, p.vertical, p.kind, p.source_session_id,
            CASE WHEN s.session_id IS NULL THEN printf('session %d is not in sessions', p.session_id)
            END AS session_unknown,
            CASE WHEN d.doc_id IS NULL THEN printf('doc %d is not in documents', p.doc_id) END AS doc_unknown,
            CASE WHEN p.kind = 'hard_positive' AND p.source_session_id IS NULL
                     THEN 'hard positive without its source session'
                 WHEN p.source_session_id IS NOT NULL AND src.session_id IS NULL
                     THEN printf('source session %d is not in sessions', p.source_session_id)
            END AS source_unknown,
            CASE WHEN h1.session_id IS NOT NULL THEN printf('session %d is held out', p.session_id)
                 WHEN h2.session_id IS NOT NULL
                     THEN printf('source session %d is held out', p.source_session_id)
            END AS heldout
        FROM _mined_pos p
        LEFT JOIN sessions s ON s.session_id = p.session_id
        LEFT JOIN documents d ON d.doc_id = p.doc_id
        LEFT JOIN sessions src ON src.session_id = p.source_session_id
        LEFT JOIN _mined_heldout h1 ON h1.session_id = p.session_id
        LEFT JOIN _mined_heldout h2 ON h2.session_id = p.source_session_id
        ORDER BY p.row_id
        """
    ).df()


def negatives_checks(
    con: duckdb.DuckDBPyConnection, positives: pd.DataFrame, negatives: pd.DataFrame, heldout: np.ndarray
) -> pd.DataFrame:
    """The negatives with row_id and one reason-or-NULL column per cross-table rule."""
    _register(con, positives, heldout)
    con.register("_mined_neg", negatives.assign(row_id=np.arange(len(negatives))))
    return con.execute(
        """
        WITH known AS (  -- the positives of each query: mined ones and the session's clicks
            SELECT session_id, doc_id FROM _mined_pos
            UNION
            SELECT i.session_id, i.doc_id FROM impressions i
            WHERE i.clicked AND i.session_id IN (SELECT session_id FROM _mined_neg)
        )
        SELECT n.row_id, n.session_id, n.positive_doc_id, n.doc_id, n.kind, n.rank,
            CASE WHEN s.session_id IS NULL THEN printf('session %d is not in sessions', n.session_id)
            END AS session_unknown,
            CASE WHEN d.doc_id IS NULL THEN printf('doc %d is not in documents', n.doc_id) END AS doc_unknown,
            CASE WHEN mp.session_id IS NULL
                     THEN printf('doc %d is not a mined positive of session %d',
                                 n.positive_doc_id, n.session_id)
            END AS positive_unknown,
            CASE WHEN k.session_id IS NOT NULL
                     THEN printf('doc %d is a positive of session %d', n.doc_id, n.session_id)
            END AS is_positive,
            CASE WHEN h.session_id IS NOT NULL THEN printf('session %d is held out', n.session_id)
            END AS heldout,
            CASE WHEN d.vertical <> s.vertical
                     THEN printf('doc %d is in %s, session %d searched %s', n.doc_id, d.vertical,
                                 n.session_id, s.vertical)
            END AS other_vertical,
            CASE WHEN n.kind = 'hard' AND n.rank IS NULL THEN 'hard negative without its rank'
                 WHEN n.kind = 'easy' AND n.rank IS NOT NULL THEN printf('easy negative with rank %d', n.rank)
            END AS rank_kind
        FROM _mined_neg n
        LEFT JOIN sessions s ON s.session_id = n.session_id
        LEFT JOIN documents d ON d.doc_id = n.doc_id
        LEFT JOIN (SELECT DISTINCT session_id, doc_id FROM _mined_pos) mp
            ON mp.session_id = n.session_id AND mp.doc_id = n.positive_doc_id
        LEFT JOIN known k ON k.session_id = n.session_id AND k.doc_id = n.doc_id
        LEFT JOIN _mined_heldout h ON h.session_id = n.session_id
        ORDER BY n.row_id
        """
    ).df()


def count_summary(positives: pd.DataFrame, negatives: pd.DataFrame) -> pd.DataFrame:
    """One row: positives, easy and hard negatives, the realised easy:hard ratio and hard share."""
    kinds = negatives["kind"].value_counts()
    easy, hard = int(kinds.get("easy", 0)), int(kinds.get("hard", 0))
    return pd.DataFrame(
        {
            "row_id": [0],
            "positives": [len(positives)],
            "easy": [easy],
            "hard": [hard],
            "easy_hard_ratio": [easy / hard if hard else math.inf],
            "hard_share": [hard / (easy + hard) if easy + hard else 0.0],
        }
    )


def count_parameters(
    promise: MinedPromise, positives: int, hard: int, max_positives: int
) -> dict[str, float]:
    """The `$PARAMETER` values of mined_counts.json for this promise and these counts."""
    p, r = positives, promise.easy_hard_ratio
    params: dict[str, float] = {"positives_min": promise.min_positives, "positives_max": max_positives}
    if promise.negatives == "random":
        exact = p * promise.random_per_positive
        params |= {"easy_min": exact, "easy_max": exact, "hard_min": 0, "hard_max": 0}
        params |= {"hard_share_min": 0.0, "hard_share_max": 0.0}
    elif promise.negatives == "hard":
        params |= {"easy_min": 0, "easy_max": 0, "hard_min": 1, "hard_max": p * promise.hard_per_positive}
        params |= {"hard_share_min": 1.0, "hard_share_max": 1.0}
    elif promise.negatives == "mixed":
        params |= {"easy_min": 1, "easy_max": p * promise.random_per_positive}
        params |= {"hard_min": 1, "hard_max": p * promise.hard_per_positive}
        # given h hard negatives, the easy count is h * r rounded: exact share 1 / (1 + r) for integer r
        h = max(hard, 1)
        params["hard_share_min"] = h / (h + math.ceil(h * r - 1e-9))
        params["hard_share_max"] = h / (h + max(math.floor(h * r + 1e-9), 0))
    else:
        raise ValueError(f"mining.negatives must be random, hard or mixed, got {promise.negatives!r}")
    return params


def validate_mined(
    con: duckdb.DuckDBPyConnection,
    positives: pd.DataFrame,
    negatives: pd.DataFrame,
    heldout_session_ids: np.ndarray,
    promise: MinedPromise,
    max_positives: int,
) -> dict[str, Any]:
    """Run the three mined-data suites; returns a report per suite, raises MinedContractError on failure.

    `con` holds the log tables (sessions, documents, impressions); `max_positives` bounds the positive count
    (the training impressions plus clicks). The results go to the Data Docs beside `con`'s database file
    (`data_docs` in the report: its index.html; None for an in-memory database).
    """
    pos = positives_checks(con, positives, heldout_session_ids)
    neg = negatives_checks(con, positives, negatives, heldout_session_ids)
    summary = count_summary(positives, negatives)
    params = count_parameters(promise, len(positives), int(summary["hard"].iat[0]), max_positives)
    params |= {"window_lo": promise.window[0], "window_hi": promise.window[1]}
    report, failures, pages = {}, [], []
    for table, frame in (("mined_positives", pos), ("mined_negatives", neg), ("mined_counts", summary)):
        rules, failed, result = _run_suite(table, frame, params)
        report[table] = {"rows": len(frame), "success": not failed, "rules": rules}
        failures += failed
        pages.append(Validation(load_suite(table), f"{promise.negatives}-negatives", result))
    report["counts"] = {k: _jsonable(v) for k, v in summary.drop(columns="row_id").iloc[0].items()}
    report["parameters"] = params
    [(db_file,)] = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    report["data_docs"] = publish_or_warn(db_file, "mining", pages) if db_file else None
    if failures:
        raise MinedContractError(failures, report["data_docs"])
    return report


def _register(con: duckdb.DuckDBPyConnection, positives: pd.DataFrame, heldout: np.ndarray) -> None:
    frame = positives[["session_id", "doc_id", "vertical", "kind", "source_session_id"]]
    con.register("_mined_pos", frame.assign(row_id=np.arange(len(frame))))
    con.register("_mined_heldout", pd.DataFrame({"session_id": np.asarray(heldout, np.int64)}))


def _jsonable(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


@cache
def _pandas_source() -> Any:
    """An ephemeral GX context (no progress bars, no telemetry) with one pandas data source."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context.data_sources.add_pandas("mined")


@cache
def _batch_definition(name: str) -> Any:
    return _pandas_source().add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)


def _run_suite(name: str, frame: pd.DataFrame, params: dict[str, Any]) -> tuple[list[dict], list[dict], Any]:
    """Validate `frame` against suite `name`; (per-rule results, failures naming the rows, the GX result)."""
    batch = _batch_definition(name).get_batch(batch_parameters={"dataframe": frame})
    suite = load_suite(name)
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]},
        expectation_parameters=params,
    )
    rules, failures = [], []
    for res in result.results:
        config = res.expectation_config
        rule = config.meta.get("rule", config.type)
        raised = (res.exception_info or {}).get("raised_exception", False)
        entry = {"rule": rule, "expectation": config.type, "success": bool(res.success) and not raised}
        rules.append(entry)
        if entry["success"]:
            continue
        if raised:
            detail = f"validation raised: {res.exception_info.get('exception_message')}"
        else:
            detail = _describe(frame, config.meta.get("check"), res.result)
        failures.append({"table": name, "rule": rule, "detail": detail})
    return rules, failures, result


def _describe(frame: pd.DataFrame, check: str | None, result: dict[str, Any]) -> str:
    """'<n> rows failed: row 3 (session_id=.., doc_id=..): reason; ...' or the observed value."""
    indices = result.get("unexpected_index_list")
    if not indices:
        observed = result.get("observed_value")
        return f"observed {_jsonable(observed) if observed is not None else result}"
    row_ids = [int(i["row_id"]) for i in indices]
    shown = frame.set_index("row_id").loc[row_ids[:SHOWN_ROWS]]
    keys = [c for c in ("session_id", "positive_doc_id", "doc_id", "kind", "rank") if c in shown.columns]
    parts = []
    for row_id, row in shown.iterrows():
        key = ", ".join(f"{c}={row[c]}" for c in keys)
        reason = f": {row[check]}" if check else ""
        parts.append(f"row {row_id} ({key}){reason}")
    more = f" (and {len(row_ids) - SHOWN_ROWS} more)" if len(row_ids) > SHOWN_ROWS else ""
    return f"{len(row_ids)} of {len(frame)} rows failed: " + "; ".join(parts) + more
