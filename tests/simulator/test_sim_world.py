"""A written world: determinism, the log schema, and the integrity of what the tables say."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ebr.schema import SCHEMA_VERSION, TABLES, VERTICALS
from ebr.simulator.tables import arrow_schema
from ebr.simulator.world import STAGES, simulate

FILES = [
    f"{t}.parquet" for t in ("users", "friendships", "documents", "memberships", "sessions", "impressions")
]
DATA_FILES = [*FILES, "ground_truth/intents.parquet", "report.json", "report.md", "schema.json"]


def _hashes(world: Path, names: list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((world / n).read_bytes()).hexdigest() for n in names}


def _read(world: Path, name: str):
    path = world / ("ground_truth/intents.parquet" if name == "intents" else f"{name}.parquet")
    return pq.read_table(path)


def test_same_seed_and_config_give_identical_bytes(tiny_world: Path, tiny_seed: int, tmp_path: Path) -> None:
    again = simulate("tiny", tiny_seed, tmp_path / "again")
    names = [*DATA_FILES, "config.yaml"]
    assert _hashes(again, names) == _hashes(tiny_world, names)


def test_output_does_not_depend_on_workers_but_on_seed(
    tiny_world: Path, tiny_seed: int, tmp_path: Path
) -> None:
    overrides = ["sessions.chunk=2000", "report.reference_graph=/nonexistent/graph.txt"]
    one = simulate("tiny", tiny_seed + 1, tmp_path / "one", [*overrides, "sessions.workers=1"])
    two = simulate("tiny", tiny_seed + 1, tmp_path / "two", [*overrides, "sessions.workers=2"])
    assert _hashes(one, DATA_FILES) == _hashes(two, DATA_FILES)
    assert _hashes(one, ["users.parquet"]) != _hashes(tiny_world, ["users.parquet"])
    report = json.loads((one / "report.json").read_text())
    assert report["graph"]["snap_ego_facebook"] is None
    assert "not found" in report["graph"]["snap_note"]


def test_tables_have_exactly_the_schema_columns_and_types(tiny_world: Path) -> None:
    assert json.loads((tiny_world / "schema.json").read_text()) == {"schema_version": SCHEMA_VERSION}
    for name, table in TABLES.items():
        assert _read(tiny_world, name).schema.remove_metadata() == arrow_schema(table), name


def test_keys_are_unique_and_references_resolve(tiny_world: Path) -> None:
    t = {name: _read(tiny_world, name).to_pandas() for name in TABLES}
    for name, table in TABLES.items():
        assert not t[name].duplicated(list(table.key)).any(), name
        required = [c.name for c in table.columns if not c.nullable]
        assert not t[name][required].isna().any().any(), name
    users, docs = set(t["users"].user_id), t["documents"]
    doc_ids = set(docs.doc_id)
    f = t["friendships"]
    assert (f.user_id < f.friend_id).all() and set(f.user_id) | set(f.friend_id) <= users
    assert set(docs.vertical) == set(VERTICALS)
    people = docs[docs.vertical == "people"]
    assert set(people.user_id.astype(int)) == users and docs[docs.vertical != "people"].user_id.isna().all()
    assert not doc_ids & users, "doc ids and user ids are disjoint ranges"
    events = docs[docs.vertical == "events"]
    groups = set(docs[docs.vertical == "groups"].doc_id)
    assert set(events.parent_doc_id.astype(int)) <= groups and events.event_time.notna().all()
    assert docs[docs.vertical != "events"][["parent_doc_id", "event_time"]].isna().all().all()
    assert set(t["memberships"].doc_id) <= doc_ids - set(people.doc_id)
    assert set(t["memberships"].user_id) <= users
    sessions, imp = t["sessions"], t["impressions"]
    assert set(sessions.user_id) <= users and set(imp.session_id) <= set(sessions.session_id)
    assert set(imp.doc_id) <= doc_ids
    assert sessions.ts.is_monotonic_increasing and sessions.session_id.is_monotonic_increasing
    positions = imp.groupby("session_id").position.agg(["min", "max", "count"])
    assert (positions["min"] == 1).all() and (positions["max"] == positions["count"]).all()
    shown = imp.merge(docs[["doc_id", "vertical"]], on="doc_id").merge(
        sessions[["session_id", "vertical"]], on="session_id", suffixes=("_doc", "_session")
    )
    assert (shown.vertical_doc == shown.vertical_session).all(), "results come from the searched vertical"


def test_intents_cover_every_session_and_reformulations_follow_failures(tiny_world: Path) -> None:
    sessions = _read(tiny_world, "sessions").to_pandas()
    intents = _read(tiny_world, "intents").to_pandas()
    imp = _read(tiny_world, "impressions").to_pandas()
    docs = _read(tiny_world, "documents").to_pandas()
    assert set(intents.session_id) == set(sessions.session_id)
    assert set(intents.target_doc_id) <= set(docs.doc_id)
    m = intents.merge(sessions, on="session_id")
    target_vertical = docs.set_index("doc_id").vertical.loc[m.target_doc_id].to_numpy()
    assert (target_vertical == m.vertical.to_numpy()).all()
    clicked_target = imp.merge(intents, on="session_id")
    clicked_target = set(
        clicked_target[
            clicked_target.clicked & (clicked_target.doc_id == clicked_target.target_doc_id)
        ].session_id
    )
    child = m[m.reformulates_session_id.notna()]
    assert len(child) > 0
    parent = m.set_index("session_id").loc[child.reformulates_session_id.astype(int)]
    assert (parent.user_id.to_numpy() == child.user_id.to_numpy()).all()
    assert (parent.vertical.to_numpy() == child.vertical.to_numpy()).all()
    assert (parent.target_doc_id.to_numpy() == child.target_doc_id.to_numpy()).all()
    delay = (child.ts.to_numpy() - parent.ts.to_numpy()) / np.timedelta64(1, "s")
    assert ((delay >= 10) & (delay <= 300)).all(), "reformulations come minutes after the failure"
    assert not set(parent.index) & clicked_target, (
        "only sessions whose target was not clicked are reformulated"
    )


def test_a_failed_generation_leaves_the_previous_world_intact(tmp_path: Path) -> None:
    small = ["users=300", "groups.count=30", "events.count=30", "sessions.count=300"]
    world = simulate("tiny", 1, tmp_path / "w", small)
    before = _hashes(world, DATA_FILES)
    with pytest.raises(ValueError, match="unknown country code 'ZZ'"):
        simulate("tiny", 2, world, [*small, "+countries.ZZ=0.1"])
    assert _hashes(world, DATA_FILES) == before
    assert [p.name for p in tmp_path.iterdir()] == ["w"], "no temporary folder is left behind"
    assert simulate("tiny", 2, world, small) == world and _hashes(world, DATA_FILES) != before


def test_world_refuses_to_replace_other_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a simulated world"):
        simulate("tiny", 1, foreign, ["users=300", "sessions.count=200"])
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown scale"):
        simulate("huge", 1, tmp_path / "w")
    with pytest.raises(ValueError, match="bad simulator override"):
        simulate("tiny", 1, tmp_path / "w", ["no_such_key=1"])
    with pytest.raises(ValueError, match="simulator.users must be a positive integer, got 'abc'"):
        simulate("tiny", 1, tmp_path / "w", ["users=abc"])
    assert not (tmp_path / "w").exists() and not list(tmp_path.glob(".w.tmp-*"))


def test_progress_per_stage_and_chunk_and_a_log_line_per_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[str, float]] = []
    small = ["users=300", "sessions.count=600", "sessions.chunk=200"]
    with caplog.at_level("INFO", logger="ebr.simulator.world"):
        simulate("tiny", 1, tmp_path / "w", small, progress=lambda what, f: calls.append((what, f)))
    fractions = [f for _, f in calls]
    assert {w for w, _ in calls} == {"simulate tiny"}
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(a <= b for a, b in zip(fractions, fractions[1:], strict=False))
    assert len(set(fractions)) == len(STAGES) + 1 + 2  # each stage, and the sessions stage after chunks 1, 2
    lines = [r.getMessage() for r in caplog.records if r.name == "ebr.simulator.world"]
    assert [line.split(": ")[1].split(" in ")[0] for line in lines] == list(STAGES)
