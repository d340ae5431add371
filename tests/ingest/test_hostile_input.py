"""Input that collides with the ingestion's internals or the file system: column names it uses itself, paths
with glob characters, links out of the logs folder, contents that must not leak into messages. Every row
read is loaded, quarantined with its true source row, or skipped."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebr.ingestion.errors import MalformedInputError
from ebr.ingestion.results import IngestResult
from ebr.schema import SESSIONS

from .logs import clean_logs, query, run_ingest, runs, snapshot, write_logs, write_table

# Names the ingestion or DuckDB use themselves: an input column taking one must change nothing.
INTERNAL_NAMES = [
    "rowid", "ROWID", "RowId", "row_id", "file_id", "source_row", "type_errors", "rid", "record", "r0", "r1",
    "raw.query", "n", "r", "s", "b", "x", "d", "bad_rows", 'quo"te', "it's", "a b", "*", "[x]", "é",
]  # fmt: skip


def _sessions(n: int, bad: Collection[int] = (), extra: dict[str, list] | None = None) -> pd.DataFrame:
    """`n` new sessions (ids 3001...), those at the 0-based positions in `bad` with an unknown vertical."""
    frame = clean_logs()["sessions"].iloc[[0] * n].reset_index(drop=True)
    frame["session_id"] = range(3001, 3001 + n)
    frame["vertical"] = ["videos" if i in bad else "people" for i in range(n)]
    return frame.assign(**(extra or {}))


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _check_accounting(result: IngestResult, db: Path) -> None:
    """The counts add up, in the result and in the run record."""
    for t, c in result.tables.items():
        assert c.read == c.loaded + c.quarantined + c.skipped_existing, (t, c)
    recorded = next(r for r in runs(db) if r["run_id"] == result.run_id)["counts"]["tables"]
    for t, c in recorded.items():
        assert c["read"] == c["loaded"] + c["quarantined"] + c["skipped_existing"], (t, c)


def _check_sessions(result: IngestResult, db: Path, frame: pd.DataFrame, bad: set[int]) -> None:
    """The valid new sessions loaded, each bad one quarantined under its own 1-based source row."""
    _check_accounting(result, db)
    counts = result.tables["sessions"]
    assert (counts.read, counts.loaded, counts.quarantined) == (len(frame), len(frame) - len(bad), len(bad))
    ids = {r[0] for r in query(db, "SELECT session_id FROM sessions WHERE session_id > 3000")}
    assert ids == {3001 + i for i in range(len(frame)) if i not in bad}
    records = query(
        db,
        "SELECT source_row, row_json FROM quarantine "
        f"WHERE table_name = 'sessions' AND run_id = '{result.run_id}'",
    )
    blamed = {(row, json.loads(row_json)["session_id"]) for row, row_json in records}
    assert {(row, int(sid)) for row, sid in blamed} == {(i + 1, 3001 + i) for i in bad}
    columns = {
        r[0] for r in query(db, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'sessions'")
    }
    assert columns == set(SESSIONS.column_names)  # undeclared input columns are not loaded


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
@pytest.mark.parametrize("rowid", [[7, 7, 7, 7, 7], ["a", "b", "c", "d", "e"], [5, 4, 3, 2, 1]])
def test_rowid_column_shadows_nothing(loaded_db: Path, tmp_path: Path, fmt: str, rowid: list) -> None:
    """An input column named rowid (a number, repeated, or text) is ignored: every row is accounted for."""
    frame = _sessions(5, bad={1, 3}, extra={"rowid": rowid})
    logs = write_logs(tmp_path / "day", {"sessions": frame}, fmt=fmt)
    result = run_ingest(logs, loaded_db, max_bad_fraction=1.0)
    _check_sessions(result, loaded_db, frame, bad={1, 3})


def test_internal_column_names_shadow_nothing(loaded_db: Path, tmp_path: Path) -> None:
    extra = {name: [f"v{i}\n'" for i in range(4)] for name in INTERNAL_NAMES}
    frame = _sessions(4, bad={2}, extra=extra)
    result = run_ingest(write_logs(tmp_path / "day", {"sessions": frame}), loaded_db, max_bad_fraction=1.0)
    _check_sessions(result, loaded_db, frame, bad={2})
    [(row_json,)] = query(loaded_db, f"SELECT row_json FROM quarantine WHERE run_id = '{result.run_id}'")
    assert json.loads(row_json)["rowid"] == "v2\n'"  # the row as read, its extra columns included


@pytest.mark.parametrize("name", ["lo*gs", "lo?gs", "lo[g]s", "l[o", "lo{g,x}s", "lo**"])
def test_glob_characters_in_paths_are_literal(loaded_db: Path, tmp_path: Path, name: str) -> None:
    """A logs folder or file name with *, ?, [ reads that folder only, never a sibling the pattern matches."""
    for sibling in ("logs", "loggs", "lo_gs", "lo", "lo[g]s-x"):  # files the name, as a pattern, matches
        write_table(tmp_path / sibling / "sessions" / "part-1.csv", _sessions(2))
    frame = _sessions(3, bad={0})
    logs = _folder(tmp_path / name)
    write_table(logs / "sessions" / "part*[1].csv", frame)
    result = run_ingest(logs, loaded_db, max_bad_fraction=1.0)
    assert result.files == {"sessions": [str(logs / "sessions" / "part*[1].csv")]}
    _check_sessions(result, loaded_db, frame, bad={0})


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A table file outside the logs folder whose first line is a secret."""
    path = tmp_path / "elsewhere" / "secret.csv"
    path.parent.mkdir()
    path.write_text("root:x:0:0:SECRET-LINE\nsecond\n")
    return path


def test_link_out_of_the_logs_folder_is_refused(loaded_db: Path, tmp_path: Path, outside: Path) -> None:
    logs = _folder(tmp_path / "logs")
    (logs / "sessions.csv").symlink_to(outside)
    with pytest.raises(MalformedInputError) as raised:
        run_ingest(logs, loaded_db)
    message = str(raised.value)
    assert message.startswith(f"{logs / 'sessions.csv'}: a link to {outside}, outside the logs folder")
    assert "\n" not in message and "SECRET" not in message
    assert "SECRET" not in json.dumps(runs(loaded_db))


def test_linked_folder_and_part_out_of_the_logs_folder_are_refused(
    loaded_db: Path, tmp_path: Path, outside: Path
) -> None:
    logs = _folder(tmp_path / "logs")
    (logs / "sessions").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(MalformedInputError, match=r"logs/sessions: a link to .*elsewhere, outside"):
        run_ingest(logs, loaded_db)
    (logs / "sessions").unlink()
    (logs / "sessions").mkdir()
    (logs / "sessions" / "part-0.csv").symlink_to(outside)
    with pytest.raises(MalformedInputError, match=r"sessions/part-0.csv: a link to .*secret.csv, outside"):
        run_ingest(logs, loaded_db)


def test_outside_links_setting_reads_them(loaded_db: Path, tmp_path: Path) -> None:
    frame = _sessions(3)
    target = write_table(tmp_path / "archive" / "sessions.parquet", frame)
    logs = _folder(tmp_path / "logs")
    (logs / "sessions.parquet").symlink_to(target)
    result = run_ingest(logs, loaded_db, outside_links=True)
    _check_sessions(result, loaded_db, frame, bad=set())


def test_link_within_the_logs_folder_is_read(loaded_db: Path, tmp_path: Path) -> None:
    frame = _sessions(3)
    logs = tmp_path / "logs"
    target = write_table(logs / "archive" / "2024-03-01.parquet", frame)
    (logs / "sessions.parquet").symlink_to(target)
    _check_sessions(run_ingest(logs, loaded_db), loaded_db, frame, bad=set())


def test_dangling_link_is_named_not_a_missing_table(tmp_path: Path) -> None:
    logs = write_logs(tmp_path / "logs", {t: f for t, f in clean_logs().items() if t != "sessions"})
    (logs / "sessions.parquet").symlink_to(tmp_path / "gone.parquet")
    with pytest.raises(MalformedInputError, match=r"sessions.parquet: a dangling link \(its target .*gone"):
        run_ingest(logs, tmp_path / "ebr.duckdb")
    (logs / "schema.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(MalformedInputError, match=r"logs/schema.json: a dangling link"):
        run_ingest(logs, tmp_path / "ebr.duckdb")


def test_messages_show_only_a_short_escaped_excerpt(loaded_db: Path, tmp_path: Path) -> None:
    """A file's contents reach an error message (and the run record) only as a short repr()."""
    logs = _folder(tmp_path / "logs")
    secret = "SECRET" * 50
    (logs / "sessions.csv").write_text(f"session_id,{secret}\n1,\x1b[31mred\n")
    with pytest.raises(MalformedInputError) as raised:
        run_ingest(logs, loaded_db)
    message = str(raised.value)
    assert "missing columns" in message and "\n" not in message and "\x1b" not in message
    assert len(message) < len(str(logs)) + 400 and secret not in message
    frame = _sessions(2).assign(ts=["yesterday\n\x1b[2J" + "x" * 500] * 2)
    (logs / "sessions.csv").unlink()
    write_table(logs / "sessions.csv", frame)
    with pytest.raises(MalformedInputError, match=r"column ts: no value can be read as TIMESTAMP") as raised:
        run_ingest(logs, loaded_db)
    message = str(raised.value)
    assert "\n" not in message and "\x1b" not in message and "x" * 100 not in message
    assert runs(loaded_db)[-1]["error"] == message


# Text a hostile file may hold: quotes, separators, newlines, control characters, non-ASCII.
_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20)
_NAMES = st.one_of(st.sampled_from(INTERNAL_NAMES), _TEXT.filter(bool)).filter(
    lambda name: name.lower() not in SESSIONS.column_names
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["csv", "parquet", "jsonl"]),
    names=st.lists(_NAMES, max_size=4, unique_by=str.lower),
    values=st.lists(_TEXT, min_size=4, max_size=4),
    bad=st.sets(st.integers(0, 3)),
    folder=st.text(st.sampled_from("ab*?[]{}!, '\"é"), min_size=1, max_size=8),
)
def test_hostile_input_is_accounted_for(
    _loaded_template: Path, fmt: str, names: list[str], values: list[str], bad: set[int], folder: str
) -> None:
    """Any extra column names and values, in any format, under a folder named with glob characters: each
    row is loaded or quarantined under its own source row, the counts add up, undeclared columns ignored."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db" / "ebr.duckdb"
        db.parent.mkdir()
        shutil.copy(_loaded_template, db)
        frame = _sessions(4, bad=bad, extra=dict.fromkeys(names, values))
        logs = write_logs(Path(tmp) / folder / "logs", {"sessions": frame}, fmt=fmt)
        before = snapshot(db)
        try:
            result = run_ingest(logs, db, max_bad_fraction=1.0)
        except MalformedInputError as e:  # pandas leaves a "\r" unquoted: DuckDB refuses the mixed line ends
            assert fmt == "csv" and any("\r" in text for text in [*names, *values]), e
            message = str(e)
            assert message.startswith(f"{logs / 'sessions.csv'}: cannot be read as csv: ")
            assert "\n" not in message
            assert snapshot(db) == before
            return
        _check_sessions(result, db, frame, bad)
