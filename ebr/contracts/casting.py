"""The types contract: how a column read from a file becomes its schema type, in DuckDB SQL.

A file's column may arrive as another type (CSV is read as text, JSON numbers may be doubles, Parquet
timestamps may carry a zone). `cast_sql` gives the SQL that converts it, or None when the column's type
can never hold the schema type (a list where an id belongs): the file is then malformed. A value that the
SQL turns into NULL although it was not NULL is a row-level type error, quarantined.
Conversions never lose information: 1.5 is not an id (DuckDB alone would round it to 2).
"""

from __future__ import annotations

INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip
FLOAT_TYPES = {"FLOAT", "DOUBLE"}
TIME_TYPES = {"DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"}
# An integer written as text, optionally with a zero fraction (exports of nullable integer columns: "12.0").
_INTEGER_TEXT = r"^\s*[+-]?[0-9]+(\.0*)?\s*$"


def quote_ident(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_str(text: str) -> str:
    """A DuckDB string literal."""
    return "'" + text.replace("'", "''") + "'"


def excerpt(text: str, limit: int = 80) -> str:
    """Input text as an error message may show it: escaped (repr) and cut to `limit` characters."""
    return repr(text[:limit])


def _family(raw_type: str) -> str:
    if raw_type == '"NULL"' or raw_type == "NULL":
        return "null"
    if raw_type in INTEGER_TYPES:
        return "integer"
    if raw_type in FLOAT_TYPES or raw_type.startswith("DECIMAL"):
        return "float"
    if raw_type in TIME_TYPES:
        return "time"
    if raw_type in ("VARCHAR", "JSON", "BOOLEAN"):
        return raw_type.lower()
    return "other"  # nested (STRUCT, LIST, MAP), BLOB, ...


def cast_sql(column_sql: str, raw_type: str, target: str) -> str | None:
    """SQL turning `column_sql` (of DuckDB type `raw_type`) into `target`, or None if it never can.

    Targets are the schema's types: BIGINT, INTEGER, DOUBLE, BOOLEAN, TIMESTAMP, VARCHAR. Timestamps
    are read as UTC (the connection's TimeZone must be UTC); an explicit offset is converted to UTC.
    """
    family = _family(raw_type)
    x = column_sql
    if family == "null":
        return f"CAST(NULL AS {target})"
    if family == "json":  # mixed JSON values: take the text of each and parse it as a string
        x, family = f"json_extract_string({x}, '$')", "varchar"
    if target in ("BIGINT", "INTEGER"):
        return {
            "integer": f"TRY_CAST({x} AS {target})",
            "float": f"CASE WHEN {x} = trunc({x}) THEN TRY_CAST({x} AS {target}) END",
            "varchar": f"CASE WHEN regexp_matches({x}, '{_INTEGER_TEXT}') "
            f"THEN TRY_CAST(trim({x}) AS {target}) END",
        }.get(family)
    if target == "DOUBLE":
        if family not in ("integer", "float", "varchar"):
            return None
        value = f"TRY_CAST({x} AS DOUBLE)"
        return f"CASE WHEN isfinite({value}) THEN {value} END"
    if target == "BOOLEAN":
        return {
            "boolean": x,
            "integer": f"CASE WHEN {x} IN (0, 1) THEN {x} = 1 END",
            "varchar": f"TRY_CAST(trim({x}) AS BOOLEAN)",
        }.get(family)
    if target == "TIMESTAMP":
        inner = {
            "time": f"TRY_CAST({x} AS TIMESTAMPTZ)",
            "varchar": f"TRY_CAST(trim({x}) AS TIMESTAMPTZ)",
        }.get(family)
        return None if inner is None else f"CASE WHEN isfinite({inner}) THEN CAST({inner} AS TIMESTAMP) END"
    if target == "VARCHAR":
        return None if family == "other" else f"CAST({x} AS VARCHAR)"
    raise ValueError(f"unsupported schema type {target}")
