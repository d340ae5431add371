"""Every contract rule: a bad row is quarantined with its failed expectation and a reason; valid rows land.

One ingestion of a log set that mixes clean rows with one bad row per rule, in all three formats, with text
maxima set (they are off by default). The allowed verticals: tests/ingest/test_schema_v2.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ebr.ingestion.ingest import ingest_logs
from ebr.ingestion.results import IngestResult

from .logs import T0, clean_logs, load_cfg, query, runs, write_table


def _dirty_logs(folder: Path) -> Path:
    clean = clean_logs()
    users = pd.concat(
        [
            clean["users"].astype({"is_active": object}),
            pd.DataFrame(
                {
                    "user_id": [5, 6, 7],
                    "name": ["", "x" * 200, "Bob"],
                    "language": ["en"] * 3,
                    "is_active": [True, True, "perhaps"],
                }
            ),
        ]
    )
    friendships = pd.concat(
        [clean["friendships"], pd.DataFrame({"user_id": [1, 2, 1], "friend_id": [1, 1, 77]})]
    )
    doc = clean["documents"].iloc[[4]]  # a group document to vary
    bad_docs = pd.concat(
        [
            doc.assign(doc_id=900, vertical="!!!"),  # no term vertical:<name>
            doc.assign(doc_id=901, title=""),
            doc.assign(doc_id=902, title="a" * 300),
            doc.assign(doc_id=903, popularity=-1.0),
            doc.assign(doc_id=904, vertical="people", user_id=pd.array([77], dtype="Int64")),
            doc.assign(doc_id=905, title="Knitting circle"),
            doc.assign(doc_id=905, title="Knitting club"),
            clean["documents"].iloc[[3]],  # an exact duplicate of doc 104: skipped
        ]
    )
    documents = pd.concat([clean["documents"], bad_docs])
    memberships = pd.concat([clean["memberships"], pd.DataFrame({"user_id": [77, 1], "doc_id": [201, 999]})])
    sessions = clean["sessions"].assign(ts=clean["sessions"]["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S"))
    base = sessions.iloc[[0]]
    extra = [
        base.assign(session_id=1101, ts="yesterday"),
        base.assign(session_id=1102, vertical="videos"),  # no document has it
        base.assign(session_id=1103, query="q" * 300),
        base.assign(session_id=1104, user_id=None),  # an anonymous search: valid
        base.assign(session_id=1105, user_id=77),
    ] + [base.assign(session_id=s, ts=str(T0 + pd.Timedelta(days=1))) for s in range(1201, 1209)]
    sessions = pd.concat([sessions, *extra]).astype({"user_id": "Int64"})
    bad_impressions = pd.DataFrame(
        [
            (1099, 101, 1, False),  # unknown session
            (1003, 999, 3, False),  # unknown document
            (1201, 101, 1, False),  # key (1201, 1) twice with different documents
            (1201, 102, 1, False),
            (1201, 103, 2, False),
            (1202, 101, 1, False),  # positions 1, 3: a gap
            (1202, 102, 3, False),
            (1203, 101, 1, False),  # a click at 4 where 2 positions... plus the click: 1, 2, 4
            (1203, 102, 2, False),
            (1203, 103, 4, True),
            (1204, 101, 0, False),  # position 0
            (1204, 102, 1, False),
            (1205, 101, 1, True),
            (1205, 102, "x", False),  # position not an integer
            (1206, 101, 1, "maybe"),  # clicked not a boolean
            (1207, 101, 1, None),  # clicked missing
            (1208, 900, 1, False),  # a document that is itself quarantined
            (1001, 101, 1, True),  # an exact duplicate of a clean row: skipped
        ],
        columns=["session_id", "doc_id", "position", "clicked"],
    )
    impressions = pd.concat([clean["impressions"].astype(object), bad_impressions])
    write_table(folder / "users.jsonl", users)
    write_table(folder / "friendships.parquet", friendships)
    write_table(folder / "documents.parquet", documents)
    write_table(folder / "memberships.csv", memberships)
    write_table(folder / "sessions.csv", sessions)
    write_table(folder / "impressions.jsonl", impressions)
    return folder


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> tuple[IngestResult, Path]:
    tmp = tmp_path_factory.mktemp("rules")
    db = tmp / "ebr.duckdb"
    cfg = load_cfg(
        max_bad_fraction=1.0,
        validation_batch_rows=4,
        text_max_chars={"title": 256, "query": 256, "name": 128},
    )
    result = ingest_logs(_dirty_logs(tmp / "logs"), db, cfg)
    return result, db


EXPECTED_COUNTS = {  # read, loaded, quarantined, skipped_existing
    "users": (7, 4, 3, 0),
    "friendships": (5, 2, 3, 0),
    "documents": (14, 6, 7, 1),
    "memberships": (4, 2, 2, 0),
    "sessions": (16, 12, 4, 0),
    "impressions": (25, 9, 15, 1),
}


def test_counts_add_up_and_valid_rows_land(dirty: tuple[IngestResult, Path]) -> None:
    result, db = dirty
    assert result.status == "succeeded"
    for table, (read, loaded, quarantined, skipped) in EXPECTED_COUNTS.items():
        counts = result.tables[table]
        assert (counts.read, counts.loaded, counts.quarantined, counts.skipped_existing) == (
            read,
            loaded,
            quarantined,
            skipped,
        ), table
        assert query(db, f"SELECT count(*) FROM {table}")[0][0] == loaded
        assert query(db, f"SELECT count(DISTINCT source_row) FROM quarantine WHERE table_name = '{table}'")[
            0
        ][0] == (quarantined)
    clean = clean_logs()
    assert sorted(r[0] for r in query(db, "SELECT doc_id FROM documents")) == sorted(
        clean["documents"]["doc_id"]
    )
    assert query(db, "SELECT count(*) FROM impressions WHERE session_id IN (1001, 1002, 1003)")[0][0] == 7
    assert query(db, "SELECT user_id FROM sessions WHERE session_id = 1104") == [(None,)]


NULL = "expect_column_values_to_be_null({})".format  # on a check column: the cross-row rules
NOT_NULL = "expect_column_values_to_not_be_null({})".format
LENGTH = "expect_column_value_lengths_to_be_between({})".format
BETWEEN = "expect_column_values_to_be_between({})".format
RULES = [  # table, a fragment of the bad row as read, expectation, a fragment of the reason
    ("users", '"user_id":5,', LENGTH("name"), "got ''"),
    ("users", '"user_id":6,', LENGTH("name"), "(200 characters)"),
    ("users", '"user_id":7,', NULL("type_errors"), "is_active 'perhaps' does not parse as BOOLEAN"),
    ("friendships", '{"user_id":1,"friend_id":1}', NULL("pair_invalid"), "1 is paired with itself"),
    ("friendships", '{"user_id":2,"friend_id":1}', NULL("pair_invalid"), "already given as (1, 2)"),
    ("friendships", '{"user_id":1,"friend_id":77}', NULL("ref_friend_id"), "friend_id 77 is not in users"),
    ("documents", '"doc_id":900,', NULL("vertical_term"), "vertical '!!!' normalises to an empty term value"),
    ("documents", '"doc_id":901,', LENGTH("title"), "non-empty, maximum length 256, got ''"),
    ("documents", '"doc_id":902,', LENGTH("title"), "(300 characters)"),
    ("documents", '"doc_id":903,', BETWEEN("popularity"), "got -1.0"),
    ("documents", '"doc_id":904,', NULL("ref_user_id"), "user_id 77 is not in users"),
    ("documents", '"title":"Knitting circle"', NULL("key_conflict"), "key (doc_id=905) appears 2 times"),
    ("documents", '"title":"Knitting club"', NULL("key_conflict"), "key (doc_id=905) appears 2 times"),
    ("memberships", '{"user_id":"77","doc_id":"201"}', NULL("ref_user_id"), "user_id 77 is not in users"),
    ("memberships", '{"user_id":"1","doc_id":"999"}', NULL("ref_doc_id"), "doc_id 999 is not in documents"),
    ("sessions", '"session_id":"1101"', NULL("type_errors"), "ts 'yesterday' does not parse as TIMESTAMP"),
    ("sessions", '"session_id":"1102"', NULL("ref_vertical"), "vertical videos is not in documents"),
    ("sessions", '"session_id":"1103"', LENGTH("query"), "(300 characters)"),
    ("sessions", '"session_id":"1105"', NULL("ref_user_id"), "user_id 77 is not in users"),
    ("impressions", '"session_id":1099,', NULL("ref_session_id"), "session_id 1099 is not in sessions"),
    ("impressions", '"doc_id":999,', NULL("ref_doc_id"), "doc_id 999 is not in documents"),
    ("impressions", '"session_id":1201,"doc_id":101', NULL("key_conflict"), "session_id=1201, position=1"),
    ("impressions", '"session_id":1201,"doc_id":102', NULL("key_conflict"), "appears 2 times"),
    ("impressions", '"session_id":1202,"doc_id":101', NULL("position_gap"), "not 1..2 without gaps"),
    ("impressions", '"session_id":1202,"doc_id":102', NULL("position_gap"), "from 1 to 3"),
    ("impressions", '"session_id":1203,"doc_id":103', NULL("click_outside_shown"),
     "clicked position 4 but session_id 1203 shows 3 results"),
    ("impressions", '"session_id":1204,"doc_id":101', BETWEEN("position"), "got 0"),
    ("impressions", '"session_id":1205,"doc_id":102', NULL("type_errors"),
     "position 'x' does not parse as INTEGER"),
    ("impressions", '"session_id":1206,', NULL("type_errors"), "clicked 'maybe' does not parse as BOOLEAN"),
    ("impressions", '"session_id":1207,', NOT_NULL("clicked"), "got null"),
    ("impressions", '"session_id":1208,', NULL("ref_doc_id"), "doc_id 900 is not in documents"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("table", "row", "expectation", "reason"), RULES, ids=[f"{r[0]}-{r[2]}" for r in RULES]
)
def test_rule_quarantines_with_reason(
    dirty: tuple[IngestResult, Path], table: str, row: str, expectation: str, reason: str
) -> None:
    result, db = dirty
    records = [
        r
        for r in query(
            db,
            "SELECT run_id, source_file, source_row, reason, row_json FROM quarantine "
            f"WHERE table_name = '{table}' AND expectation = '{expectation}'",
        )
        if row in r[4]
    ]
    assert records, f"no {expectation} record for {row} in {table}"
    run_id, source_file, source_row, got_reason, row_json = records[0]
    assert run_id == result.run_id
    assert Path(source_file).name.startswith(table)
    assert reason in got_reason
    assert source_row >= 1


def test_source_row_and_row_as_read(dirty: tuple[IngestResult, Path]) -> None:
    """The quarantine names the file and the 1-based data row, and keeps the row as it was read."""
    _, db = dirty
    [(source_file, source_row, row_json)] = query(
        db,
        "SELECT source_file, source_row, row_json FROM quarantine "
        "WHERE table_name = 'sessions' AND expectation = 'expect_column_values_to_be_null(type_errors)'",
    )
    assert source_file.endswith("sessions.csv") and source_row == 4  # 3 clean rows, then 'yesterday'
    assert json.loads(row_json)["ts"] == "yesterday"


def test_unparseable_row_is_reported_for_that_alone(dirty: tuple[IngestResult, Path]) -> None:
    _, db = dirty
    expectations = query(
        db,
        "SELECT expectation FROM quarantine WHERE table_name = 'sessions' AND row_json LIKE '%yesterday%'",
    )
    assert expectations == [("expect_column_values_to_be_null(type_errors)",)]


def test_contract_results_are_recorded(dirty: tuple[IngestResult, Path]) -> None:
    result, db = dirty
    [run] = runs(db)
    assert run["run_id"] == result.run_id and run["status"] == "succeeded"
    assert run["counts"]["tables"]["impressions"]["quarantined"] == 15
    outcomes = {o["expectation"]: o for o in run["contracts"]["impressions"]}
    gap = outcomes["expect_column_values_to_be_null(position_gap)"]
    assert gap["success"] is False and gap["failed"] == 7  # sessions 1202 (2 rows), 1203 (3), 1204 (2)
    assert outcomes["expect_column_values_to_not_be_null(session_id)"]["success"] is True
    assert result.summary()["failed_expectations"]["users"] == [
        "expect_column_values_to_be_null(type_errors)",
        "expect_column_value_lengths_to_be_between(name)",
    ]
