"""Rules that span rows or tables, computed in DuckDB as per-row check columns that the suites test.

A suite names such a rule by an expectation `expect_column_values_to_be_null` on a check column whose meta
says `check: <kind>`. `check_query` gives, for that column, the SQL listing each failing row of the batch
once with a readable reason (`row_id`, `<column>`); the rows not listed pass. Joins and window functions in
DuckDB keep this fast at millions of rows, where a value-set expectation would carry every key in the suite.

A check sees three relations: the batch being validated (its candidate rows: they parsed and are not
already loaded), the rows already in the database (`main.<table>`), and the rows of other tables that this
run accepted so far (`ctx.accepted(table)`). References are checked against the latter two together.
Check queries may call the Python functions that `register_functions` gives the connection (the engine's
`term_value`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from ebr.contracts.casting import quote_ident as q
from ebr.retrieval.terms import term_value

PARSEABLE = "parseable"  # computed while the file is read (ebr.contracts.casting), not here
TERM_VALUE = "ebr_term_value"  # ebr.retrieval.terms.term_value as a SQL function (register_functions)


@dataclass(frozen=True)
class CheckContext:
    table: str  # the log table being validated
    batch: str  # relation of its candidate rows: row_id plus the schema columns, typed
    accepted: Callable[[str], str]  # table -> relation of the rows of that table accepted in this run
    known: frozenset[str]  # tables with rows in the database or in this run


def register_functions(con: duckdb.DuckDBPyConnection) -> None:
    """Give `con` the Python functions that the check queries call."""
    con.create_function(TERM_VALUE, term_value, ["VARCHAR"], "VARCHAR", side_effects=False)


def _key_text(columns: list[str], alias: str) -> str:
    parts = [f"'{c}=' || coalesce(CAST({alias}.{q(c)} AS VARCHAR), 'null')" for c in columns]
    return " || ', ' || ".join(parts)


def _unique_key(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    cols = list(meta["columns"])
    on = " AND ".join(f"d.{q(c)} = b.{q(c)}" for c in cols)
    part = ", ".join(q(c) for c in cols)
    not_null = " AND ".join(f"{q(c)} IS NOT NULL" for c in cols)
    return f"""
        SELECT row_id, format('key ({{}}) appears {{}} times in this batch with different content',
                              k, n) AS msg
        FROM (SELECT row_id, {_key_text(cols, "b")} AS k, count(*) OVER (PARTITION BY {part}) AS n
              FROM {ctx.batch} b WHERE {not_null})
        WHERE n > 1
        UNION ALL
        SELECT b.row_id, format('key ({{}}) is already loaded with different content', {_key_text(cols, "b")})
        FROM {ctx.batch} b WHERE EXISTS (SELECT 1 FROM main.{q(ctx.table)} d WHERE {on})"""


def _reference(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    col = meta["column"]
    parent, parent_col = meta["references"].split(".")
    keys = (
        f"SELECT {q(parent_col)} AS k FROM main.{q(parent)} "
        f"UNION ALL SELECT {q(parent_col)} FROM {ctx.accepted(parent)}"
    )
    return f"""
        SELECT b.row_id, format('{col} {{}} is not in {parent}', b.{q(col)}) AS msg
        FROM {ctx.batch} b
        WHERE b.{q(col)} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ({keys}) p WHERE p.k = b.{q(col)})"""


def _term_value(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    """The value becomes an engine term `<column>:<value>`: its normalised value must not be empty."""
    col = meta["column"]
    return f"""
        SELECT row_id, format('{col} ''{{}}'' normalises to an empty term value', {q(col)}) AS msg
        FROM {ctx.batch}
        WHERE {q(col)} IN (
            SELECT v FROM (SELECT DISTINCT {q(col)} AS v FROM {ctx.batch}) WHERE {TERM_VALUE}(v) = '')"""


def _shown(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    """Per group (session): how many distinct positions were shown, and their range (loaded + batch)."""
    g, p = q(meta["group"]), q(meta["position"])
    return f"""
        SELECT {g} AS grp, count(*) AS n, min(pos) AS lo, max(pos) AS hi FROM (
            SELECT {g}, {p} AS pos FROM main.{q(ctx.table)} WHERE {g} IN (SELECT {g} FROM {ctx.batch})
            UNION
            SELECT {g}, {p} FROM {ctx.batch} WHERE {g} IS NOT NULL AND {p} IS NOT NULL)
        GROUP BY {g}"""


def _positions_contiguous(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    g = q(meta["group"])
    return f"""
        SELECT b.row_id,
               format('{meta["group"]} {{}} shows {{}} distinct positions from {{}} to {{}}, '
                      'not 1..{{}} without gaps', s.grp, s.n, s.lo, s.hi, s.n) AS msg
        FROM {ctx.batch} b JOIN ({_shown(meta, ctx)}) s ON s.grp = b.{g}
        WHERE s.lo <> 1 OR s.hi <> s.n"""


def _click_within_shown(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    g, p, clicked = q(meta["group"]), q(meta["position"]), q(meta["clicked"])
    return f"""
        SELECT b.row_id,
               format('clicked position {{}} but {meta["group"]} {{}} shows {{}} results',
                      b.{p}, s.grp, s.n) AS msg
        FROM {ctx.batch} b JOIN ({_shown(meta, ctx)}) s ON s.grp = b.{g}
        WHERE b.{clicked} AND b.{p} > s.n"""


def _undirected_pair(meta: Mapping[str, Any], ctx: CheckContext) -> str:
    a, b_ = (q(c) for c in meta["columns"])
    table = q(ctx.table)
    return f"""
        SELECT row_id, format('{{}} is paired with itself', {a}) AS msg FROM {ctx.batch} WHERE {a} = {b_}
        UNION ALL
        SELECT b.row_id,
               format('pair ({{}}, {{}}) is already given as ({{}}, {{}})', b.{a}, b.{b_}, b.{b_}, b.{a})
        FROM {ctx.batch} b
        WHERE b.{a} <> b.{b_} AND (
            EXISTS (SELECT 1 FROM main.{table} d WHERE d.{a} = b.{b_} AND d.{b_} = b.{a})
            OR EXISTS (SELECT 1 FROM {ctx.batch} e
                       WHERE e.{a} = b.{b_} AND e.{b_} = b.{a} AND e.row_id < b.row_id))"""


CHECKS: dict[str, Callable[[Mapping[str, Any], CheckContext], str]] = {
    "unique_key": _unique_key,
    "reference": _reference,
    "term_value": _term_value,
    "positions_contiguous": _positions_contiguous,
    "click_within_shown": _click_within_shown,
    "undirected_pair": _undirected_pair,
}


def skip_reason(meta: Mapping[str, Any], ctx: CheckContext) -> str | None:
    """Why the check cannot run in this context (a reference to a table never ingested), or None."""
    if meta["check"] == "reference":
        parent = meta["references"].split(".")[0]
        if parent not in ctx.known:
            return f"{parent} not ingested: {meta['column']} is not checked"
    return None


def check_query(column: str, meta: Mapping[str, Any], ctx: CheckContext) -> str:
    """SQL of (row_id, <column>): each failing row of the batch once, with its reasons."""
    body = CHECKS[meta["check"]](meta, ctx)
    return f"SELECT row_id, string_agg(msg, '; ') AS {q(column)} FROM ({body}) GROUP BY row_id"
