"""The committed suites agree with the schema, load in Great Expectations, and never pass by raising."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from ebr.contracts import SUITES_DIR, ContractError, ContractRunner, load_contract
from ebr.contracts.casting import cast_sql
from ebr.contracts.checks import CHECKS, PARSEABLE
from ebr.home import PROJECT_ROOT
from ebr.ingestion.config import IngestConfig
from ebr.schema import LOG_TABLES, TABLES, VERTICALS

from .logs import load_cfg


@pytest.mark.parametrize("table", LOG_TABLES, ids=lambda t: t.name)
def test_suite_matches_schema(table) -> None:  # noqa: ANN001
    import great_expectations as gx

    raw = json.loads((SUITES_DIR / f"{table.name}.json").read_text())
    assert gx.ExpectationSuite(**raw).name == table.name  # loads in GX as committed
    contract = load_contract(table.name)
    names = [e.name for e in contract.expectations]
    assert len(names) == len(set(names))

    required = [c.name for c in table.columns if not c.nullable]
    [columns] = [e for e in contract.file_level if e.type == "expect_table_columns_to_match_set"]
    assert columns.kwargs["column_set"] == required
    not_null = [e.column for e in contract.row_level if e.type == "expect_column_values_to_not_be_null"]
    assert sorted(not_null) == sorted(required)
    assert len(contract.parseable) == 1

    for e in contract.row_level:
        if e.check:
            assert e.check in CHECKS and e.column not in table.column_names
        else:
            assert e.column in table.column_names
        if e.check == "unique_key":
            assert tuple(e.meta["columns"]) == table.key
        if e.check == "reference":
            parent, key = e.meta["references"].split(".")
            assert (key,) == TABLES[parent].key or (table.name, key) == ("sessions", "vertical")
            assert [t.name for t in LOG_TABLES].index(parent) < LOG_TABLES.index(table)  # validated before
        if e.type == "expect_column_values_to_be_in_set":
            assert (
                e.kwargs["value_set"] == {"$PARAMETER": "verticals"} and e.meta["skip_if_null"] == "verticals"
            )


def test_log_schema_doc_lists_every_column() -> None:
    doc = (PROJECT_ROOT / "docs" / "log_schema.md").read_text()
    for table in LOG_TABLES:
        section = doc.split(f"### {table.name} (")[1].split("###")[0]
        assert f"key `{table.key[0]}`" in section or f"key `({', '.join(table.key)})`" in section
        for c in table.columns:
            assert f"| {c.name} | {c.sql_type} | {'yes' if c.nullable else 'no'} |" in section, (
                table.name,
                c.name,
            )


def test_rules_of_the_brief_are_all_there() -> None:
    checks = {(t.name, e.check) for t in LOG_TABLES for e in load_contract(t.name).checks}
    references = {
        (t.name, e.meta["column"], e.meta["references"])
        for t in LOG_TABLES
        for e in load_contract(t.name).checks
        if e.check == "reference"
    }
    assert {
        ("impressions", "positions_contiguous"),
        ("impressions", "click_within_shown"),
        ("documents", "term_value"),
    } <= checks
    assert {
        ("impressions", "session_id", "sessions.session_id"),
        ("impressions", "doc_id", "documents.doc_id"),
        ("memberships", "user_id", "users.user_id"),
        ("memberships", "doc_id", "documents.doc_id"),
        ("friendships", "user_id", "users.user_id"),
        ("friendships", "friend_id", "users.user_id"),
        ("sessions", "vertical", "documents.vertical"),
    } <= references
    assert all(load_contract(t.name).parseable[0].check == PARSEABLE for t in LOG_TABLES)


def test_an_expectation_that_raises_is_an_error_not_a_pass() -> None:
    runner = ContractRunner({"title_max_chars": 10, "query_max_chars": 10, "name_max_chars": 10})
    frame = pd.DataFrame(  # no friend_id column: GX reports the error only in exception_info
        {
            "row_id": [0],
            "user_id": [1],
            "type_errors": None,
            "ref_user_id": None,
            "ref_friend_id": None,
            "pair_invalid": None,
        }
    )
    with pytest.raises(
        ContractError, match=r"friendships: expect_column_values_to_not_be_null\(friend_id\) raised"
    ):
        runner.check_rows("friendships", frame)


def test_parameters_come_from_config() -> None:
    """Text maxima are off by default (non-empty still required); a number restores the limit."""
    frame = pd.DataFrame(
        {"row_id": [0, 1, 2], "user_id": [1, 2, 3], "name": ["Ann", "x" * 100_001, ""],
         "city": None, "region": None, "country": None, "language": None, "is_active": True,
         "type_errors": None, "key_conflict": None}
    )  # fmt: skip
    default = ContractRunner(IngestConfig.from_cfg(load_cfg()).suite_params())
    [empty] = default.check_rows("users", frame)
    assert empty.row_id == 2 and empty.reason == "expected name non-empty, maximum length not set, got ''"
    limited = load_cfg(text_max_chars={"title": None, "query": None, "name": 128})
    failures = ContractRunner(IngestConfig.from_cfg(limited).suite_params()).check_rows("users", frame)
    assert [f.row_id for f in failures] == [1, 2]
    assert failures[0].expectation == "expect_column_value_lengths_to_be_between(name)"
    assert (
        "maximum length 128, got 'xxx" in failures[0].reason and "(100001 characters)" in failures[0].reason
    )


def test_verticals_of_a_folder() -> None:
    """Version 2: `ingest.verticals` (null: rule skipped); version 1: its own three, whatever it says."""
    frame = pd.DataFrame(
        {"row_id": [0, 1], "session_id": [1, 2], "user_id": None, "ts": pd.Timestamp("2024-03-01"),
         "vertical": ["jobs", "people"], "query": "q", "city": None, "region": None, "country": None,
         "language": None, "type_errors": None, "key_conflict": None, "ref_user_id": None,
         "ref_vertical": None}
    )  # fmt: skip
    restricted = IngestConfig.from_cfg(load_cfg(verticals=["jobs", "papers"]))
    assert restricted.suite_params(2)["verticals"] == ["jobs", "papers"]
    assert restricted.suite_params(1)["verticals"] == list(VERTICALS)
    [failure] = ContractRunner(restricted.suite_params(1)).check_rows("sessions", frame)
    assert failure.row_id == 0
    assert (
        failure.reason
        == "expected vertical one of the allowed verticals (people, groups, events), got 'jobs'"
    )
    assert [f.row_id for f in ContractRunner(restricted.suite_params(2)).check_rows("sessions", frame)] == [1]
    any_vertical = ContractRunner(IngestConfig.from_cfg(load_cfg()).suite_params(2))
    assert any_vertical.check_rows("sessions", frame) == []
    outcomes = {o["expectation"]: o for o in any_vertical.results()["sessions"]}
    assert outcomes["expect_column_values_to_be_in_set(vertical)"]["skipped"] == (
        "verticals not set: any value is accepted"
    )


CASTS = [  # DuckDB type of the column as read, literal, schema type, value expected (None: does not parse)
    ("VARCHAR", "'12'", "BIGINT", 12),
    ("VARCHAR", "'12.0'", "BIGINT", 12),  # a nullable integer column exported by pandas
    ("VARCHAR", "'1.5'", "BIGINT", None),  # DuckDB's own cast would round it to 2
    ("VARCHAR", "'1e3'", "BIGINT", None),
    ("VARCHAR", "'99999999999999999999'", "BIGINT", None),
    ("DOUBLE", "2.0", "BIGINT", 2),
    ("DOUBLE", "2.5", "BIGINT", None),
    ("BIGINT", "3000000000", "INTEGER", None),
    ("VARCHAR", "'true'", "BOOLEAN", True),
    ("VARCHAR", "'0'", "BOOLEAN", False),
    ("BIGINT", "2", "BOOLEAN", None),
    ("VARCHAR", "'2024-01-01T10:00:00+02:00'", "TIMESTAMP", pd.Timestamp("2024-01-01 08:00:00")),
    ("VARCHAR", "'2024-01-01 10:00:00'", "TIMESTAMP", pd.Timestamp("2024-01-01 10:00:00")),
    ("VARCHAR", "'infinity'", "TIMESTAMP", None),
    ("VARCHAR", "'nan'", "DOUBLE", None),
    ("JSON", "'\"7\"'", "BIGINT", 7),
]


@pytest.mark.parametrize(("raw_type", "literal", "target", "expected"), CASTS)
def test_casts_never_lose_information(raw_type: str, literal: str, target: str, expected: object) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    sql = cast_sql("x", raw_type, target)
    [(value,)] = con.execute(f"SELECT {sql} FROM (SELECT CAST({literal} AS {raw_type}) AS x)").fetchall()
    assert value == (expected.to_pydatetime() if isinstance(expected, pd.Timestamp) else expected)


@pytest.mark.parametrize(
    ("raw_type", "target"), [("INTEGER[]", "BIGINT"), ("BIGINT", "TIMESTAMP"), ("DOUBLE", "BOOLEAN")]
)
def test_incompatible_column_types(raw_type: str, target: str) -> None:
    assert cast_sql("x", raw_type, target) is None
