"""Rating: sampling served EBR results into `rating_tasks` under a budget, and importing raters' labels into
`rater_labels` (the table format: docs/log_schema.md, "Rater labels").

A task is one distinct (vertical, query, searcher, document) of `served_results`, id `task_id`: the first 16
hex digits of the sha256 of those four values. `sample_tasks` draws, among the served EBR results without a
task yet, at most `budget` tasks, split over the verticals in proportion to what each has to rate (largest
remainders, ties by vertical name), each vertical's draw a seeded permutation of its candidates in task-id
order: the same tables, budget and seed give the same tasks.

A label file (CSV or Parquet) names a task by `task_id`, or by `query`, `searcher_id` (may be empty) and
`doc_id`; `label` is a number >= 0 (0/1, or a grade); `rater` and `ts` (ISO time) are optional. A bad row
is one line of error naming the file and row (and a `quarantine` row); the valid rows land.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ebr.ranking.served_log import CONTEXT_KEYS, QUARANTINE_DDL, RESULTS_DDL

TASK_COLUMNS = (
    "task_id", "batch_id", "created_at", "vertical", "query", "searcher_id", *CONTEXT_KEYS, "doc_id", "rank",
    "score", "version", "request_id",
)  # fmt: skip
TASKS_DDL = """CREATE TABLE IF NOT EXISTS main.rating_tasks (
    task_id VARCHAR PRIMARY KEY, batch_id VARCHAR, created_at TIMESTAMP, vertical VARCHAR, query VARCHAR,
    searcher_id BIGINT, city VARCHAR, region VARCHAR, country VARCHAR, language VARCHAR, doc_id BIGINT,
    rank INTEGER, score DOUBLE, version VARCHAR, request_id VARCHAR)"""
LABEL_COLUMNS = ("task_id", "query", "searcher_id", "doc_id", "label", "rater", "ts", "source", "imported_at")
LABELS_DDL = """CREATE TABLE IF NOT EXISTS main.rater_labels (
    task_id VARCHAR, query VARCHAR, searcher_id BIGINT, doc_id BIGINT, label DOUBLE, rater VARCHAR,
    ts TIMESTAMP, source VARCHAR, imported_at TIMESTAMP)"""


def task_id(vertical: str | None, query: str | None, searcher_id: int | None, doc_id: int) -> str:
    """The id of the task rating `doc_id` for this query of this searcher in this vertical."""
    text = "\x1f".join(["" if v is None else str(v) for v in (vertical, query, searcher_id)] + [str(doc_id)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in (RESULTS_DDL, TASKS_DDL, LABELS_DDL, QUARANTINE_DDL):
        con.execute(ddl)


def allocate(available: dict[str, int], budget: int) -> dict[str, int]:
    """Tasks per vertical: proportional to `available`, largest remainders first (ties by name), capped."""
    total = sum(available.values())
    if total <= budget:
        return dict(available)
    quotas = {v: budget * n / total for v, n in available.items()}
    out = {v: min(math.floor(q), available[v]) for v, q in quotas.items()}
    order = sorted(available, key=lambda v: (-(quotas[v] - math.floor(quotas[v])), v))
    left = budget - sum(out.values())
    while left > 0:
        moved = False
        for v in order:
            if left and out[v] < available[v]:
                out[v] += 1
                left -= 1
                moved = True
        if not moved:
            break
    return out


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def sample_tasks(db_path: Path, budget: int, seed: int, batch_id: str) -> dict[str, Any]:
    """Draw at most `budget` new rating tasks from `served_results` into `rating_tasks`; returns the counts
    per vertical (available, sampled)."""
    if budget < 0:
        raise ValueError(f"feedback.budget must be at least 0, got {budget}")
    with duckdb.connect(str(db_path)) as con:
        ensure_tables(con)
        served = con.execute(
            "SELECT vertical, query, searcher_id, city, region, country, language, doc_id, rank, score, "
            "version, request_id FROM main.served_results ORDER BY request_id, rank"
        ).df()
        known = {r[0] for r in con.execute("SELECT task_id FROM main.rating_tasks").fetchall()}
        served["searcher_id"] = served["searcher_id"].astype("Int64")
        ids = [
            task_id(_none(r.vertical), _none(r.query), _int(r.searcher_id), int(r.doc_id))
            for r in served.itertuples()
        ]
        served.insert(0, "task_id", ids)
        fresh = served.drop_duplicates("task_id")  # the first serving of each task (by request id)
        fresh = fresh[~fresh["task_id"].isin(known)].sort_values("task_id", kind="stable")
        fresh = fresh.assign(vertical_key=fresh["vertical"].fillna("(expression)"))
        groups = {str(v): g for v, g in fresh.groupby("vertical_key", sort=True)}
        quota = allocate({v: len(g) for v, g in groups.items()}, budget)
        chosen = []
        for vertical, group in groups.items():
            rng = np.random.default_rng([seed, _stable_int(vertical)])
            chosen.append(group.iloc[np.sort(rng.permutation(len(group))[: quota[vertical]])])
        tasks = pd.concat(chosen) if chosen else fresh.iloc[:0]
        tasks = tasks.drop(columns="vertical_key").assign(
            batch_id=batch_id, created_at=datetime.now(UTC).replace(tzinfo=None)
        )
        if len(tasks):
            con.register("_tasks", tasks[list(TASK_COLUMNS)])
            con.execute(f"INSERT INTO main.rating_tasks SELECT {', '.join(TASK_COLUMNS)} FROM _tasks")
            con.unregister("_tasks")
    return {
        "batch_id": batch_id,
        "budget": budget,
        "sampled": len(tasks),
        "verticals": [{"vertical": v, "available": len(g), "sampled": quota[v]} for v, g in groups.items()],
    }


def pending_tasks(db_path: Path) -> pd.DataFrame:
    """The rating tasks without a label yet, in task-id order."""
    with duckdb.connect(str(db_path)) as con:
        ensure_tables(con)
        return con.execute(
            "SELECT t.* FROM main.rating_tasks t WHERE NOT EXISTS "
            "(SELECT 1 FROM main.rater_labels l WHERE l.task_id = t.task_id) ORDER BY t.task_id"
        ).df()


@dataclass
class ImportReport:
    rows: int = 0
    landed: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "landed": self.landed, "rejected": len(self.errors), "errors": self.errors}


def read_label_file(path: Path) -> pd.DataFrame:
    """A label file's rows as strings (CSV) or values (Parquet); ValueError naming the file."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable label file ({str(exc).splitlines()[0]})") from None
    raise ValueError(f"{path}: a label file is .csv or .parquet")


def import_labels(
    db_path: Path, path: Path, run_id: str, source: str | None = None, frame: pd.DataFrame | None = None
) -> ImportReport:
    """Import the labels of `path` (or of `frame`, named `path`) into `rater_labels`; a bad row is an error
    line and a quarantine row, the valid rows land in one transaction."""
    table = read_label_file(path) if frame is None else frame
    if "label" not in table.columns or not (
        {"task_id"} <= set(table.columns) or {"query", "doc_id"} <= set(table.columns)
    ):
        raise ValueError(
            f"{path}: a label file needs `label` and `task_id`, or `query`, `doc_id` (and searcher_id)"
        )
    report = ImportReport(rows=len(table))
    imported_at = datetime.now(UTC).replace(tzinfo=None)
    with duckdb.connect(str(db_path)) as con:
        ensure_tables(con)
        tasks = con.execute("SELECT task_id, query, searcher_id, doc_id FROM main.rating_tasks").df()
        by_id = {r.task_id: r for r in tasks.itertuples()}
        by_key: dict[tuple[Any, ...], Any] = {}
        for r in tasks.sort_values("task_id").itertuples():
            by_key.setdefault((_none(r.query), _int(r.searcher_id), int(r.doc_id)), r)
        good, bad = [], []
        for number, row in enumerate(table.to_dict("records"), start=1):
            try:
                good.append(_label_row(row, by_id, by_key) + (source or str(path), imported_at))
            except ValueError as exc:
                message = f"{path}: row {number}: {exc}"
                report.errors.append(message)
                bad.append((run_id, "rater_labels", str(path), number, "label_row", str(exc), _json(row)))
        con.execute("BEGIN")
        try:
            if good:
                con.executemany(
                    f"INSERT INTO main.rater_labels VALUES ({', '.join('?' * len(LABEL_COLUMNS))})", good
                )
            if bad:
                con.executemany("INSERT INTO main.quarantine VALUES (?, ?, ?, ?, ?, ?, ?)", bad)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    report.landed = len(good)
    return report


def _label_row(
    row: dict[str, Any], by_id: dict[str, Any], by_key: dict[tuple[Any, ...], Any]
) -> tuple[Any, ...]:
    label = _number(row.get("label"), "label")
    if label is None or label < 0:
        raise ValueError(f"label: expected a number >= 0, got {row.get('label')!r}")
    given = _text(row.get("task_id"))
    if given is not None:
        task = by_id.get(given)
        if task is None:
            raise ValueError(f"task_id {given!r} is not a rating task")
    else:
        query, doc_id = _text(row.get("query")), _number(row.get("doc_id"), "doc_id", integer=True)
        searcher = _number(row.get("searcher_id"), "searcher_id", integer=True)
        if query is None or doc_id is None:
            raise ValueError("give task_id, or query and doc_id")
        task = by_key.get((query, searcher, doc_id))
        if task is None:
            raise ValueError(
                f"no rating task rates doc_id {doc_id} for query {query!r} of searcher {searcher}"
            )
    ts_text = _text(row.get("ts"))
    try:
        ts = None if ts_text is None else datetime.fromisoformat(ts_text)
    except ValueError:
        raise ValueError(f"ts: not an ISO time: {ts_text!r}") from None
    if ts is not None and ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return (
        task.task_id, _none(task.query), _int(task.searcher_id), int(task.doc_id), float(label),
        _text(row.get("rater")), ts,
    )  # fmt: skip


def _number(value: Any, name: str, integer: bool = False) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise ValueError(
                f"{name}: expected {'an integer' if integer else 'a number'}, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _text(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def _json(row: dict[str, Any]) -> str:
    import json

    return json.dumps({k: None if v is pd.NA else v for k, v in row.items()}, default=str)


def _none(value: Any) -> Any:
    return (
        None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else value
    )


def _int(value: Any) -> int | None:
    return None if _none(value) is None else int(value)


def label_counts(db_path: Path, relevant_label: float) -> dict[str, Any]:
    """Tasks, labels and the label balance (tasks judged relevant by the raters' majority) per vertical."""
    with duckdb.connect(str(db_path)) as con:
        ensure_tables(con)
        rows = con.execute(
            "WITH per_task AS (SELECT l.task_id, avg(CASE WHEN l.label >= ? THEN 1.0 ELSE 0.0 END) AS share, "
            "count(*) AS labels FROM main.rater_labels l GROUP BY 1) "
            "SELECT coalesce(t.vertical, '(expression)') AS vertical, count(*) AS tasks, "
            "count(p.task_id) AS rated, coalesce(sum(p.labels), 0) AS labels, "
            "coalesce(sum(CASE WHEN p.share >= 0.5 THEN 1 ELSE 0 END), 0) AS relevant "
            "FROM main.rating_tasks t LEFT JOIN per_task p USING (task_id) GROUP BY 1 ORDER BY 1",
            [relevant_label],
        ).df()
    records = [{k: (v if k == "vertical" else int(v)) for k, v in r.items()} for r in rows.to_dict("records")]
    return {"verticals": records}


def labelled_tasks(db_path: Path, relevant_label: float) -> pd.DataFrame:
    """Each rated task with its request (vertical, query, searcher, context) and `relevant`: the raters'
    majority (a tie counts as relevant), in task-id order."""
    with duckdb.connect(str(db_path)) as con:
        ensure_tables(con)
        return con.execute(
            "SELECT t.task_id, t.vertical, t.query, t.searcher_id, t.city, t.region, t.country, t.language, "
            "t.doc_id, avg(CASE WHEN l.label >= ? THEN 1.0 ELSE 0.0 END) >= 0.5 AS relevant, "
            "count(*) AS labels FROM main.rating_tasks t JOIN main.rater_labels l USING (task_id) "
            "GROUP BY ALL ORDER BY t.task_id",
            [relevant_label],
        ).df()
