"""Durable realtime updates: acknowledged changes survive a kill; torn logs, compaction, locks, validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import clustered, corpus_index, make_corpus

from ebr.config import engine_defaults
from ebr.retrieval.documents import DocumentExistsError, DocumentNotFoundError, UpdateError
from ebr.retrieval.query import parse
from ebr.retrieval.store import CorruptLogError, Engine, EngineLockedError

Q = clustered(np.random.default_rng(5), 1)[0]
ALL = parse("(and (term vertical:people) (nn unified :radius 1.5 :nprobe 16))")


@pytest.fixture
def base(tmp_path: Path, trained) -> Path:
    """An engine folder (the builder's format) of 200 documents."""
    folder = tmp_path / "engine"
    folder.mkdir()
    corpus_index(make_corpus(seed=12, n=200), trained).save(folder)
    return folder


def snapshot(engine: Engine) -> dict[int, float]:
    hits = engine.search(ALL, {"unified": Q})
    texts = engine.search(parse("(term text:fresh)"), {})
    return {
        **dict(zip(hits.doc_ids.tolist(), np.round(hits.scores, 6).tolist(), strict=True)),
        **{-d: 0.0 for d in texts.doc_ids.tolist()},
    }


def vec(seed: int) -> list[float]:
    return clustered(np.random.default_rng(seed), 1)[0].tolist()


def test_changes_are_visible_at_once_and_after_reopening(base: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    engine = Engine.open(base, state)
    some = int(engine.index.doc_ids[0])
    engine.add(7, ["vertical:people", "text:fresh"], {"unified": vec(1)})
    engine.update(some, terms=["vertical:people", "text:fresh"])  # keeps its embeddings
    engine.delete(int(engine.index.doc_ids[1]))
    assert engine.document(7) == {
        "doc_id": 7,
        "terms": ["vertical:people", "text:fresh"],
        "payloads": {},
        "keys": ["unified"],
    }
    assert engine.document(some)["keys"] == ["text", "unified"]
    before = snapshot(engine)
    assert 7 in before and -7 in before and -some in before and int(engine.index.doc_ids[1]) not in before
    engine.close()
    reopened = Engine.open(base, state)
    assert snapshot(reopened) == before
    assert list(base.iterdir()) and not (base / "wal-0.log").exists()  # the base folder is never written


def test_acknowledged_changes_survive_a_kill(base: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = textwrap.dedent(f"""
        from pathlib import Path
        from ebr.retrieval.store import Engine
        engine = Engine.open(Path({str(base)!r}), Path({str(state)!r}))
        for i in range(1000):
            engine.add(10_000 + i, ["vertical:people", "text:fresh"], {{}})
            print(i, flush=True)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    acked = -1
    assert child.stdout is not None
    for line in child.stdout:
        acked = int(line)
        if acked >= 30:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    engine = Engine.open(base, state)
    present = {int(d) - 10_000 for d in engine.search(parse("(term text:fresh)"), {}).doc_ids}
    assert set(range(acked + 1)) <= present


def test_a_torn_last_record_is_cut_and_damage_in_the_middle_is_reported(base: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    engine = Engine.open(base, state)
    engine.add(1, ["text:fresh"], {})
    engine.add(2, ["text:fresh"], {})
    engine.close()
    log = state / "wal-0.log"
    good = log.read_bytes()
    log.write_bytes(good + good[:20])  # a crash in the middle of an append
    assert {1, 2} == set(
        Engine.open(base, state, writable=False).search(parse("(term text:fresh)"), {}).doc_ids.tolist()
    )
    assert log.stat().st_size == len(good) + 20  # a reader never repairs
    Engine.open(base, state).close()
    assert log.read_bytes() == good  # a writer does
    damaged = bytearray(good)
    damaged[12] ^= 0xFF  # inside the first record's payload
    log.write_bytes(bytes(damaged))
    with pytest.raises(CorruptLogError, match=r"wal-0\.log: record at byte 0 fails its checksum"):
        Engine.open(base, state)


def test_compaction_starts_a_new_generation(base: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    engine = Engine.open(base, state)
    for i in range(5):
        engine.add(100 + i, ["vertical:people", "text:fresh"], {"unified": vec(i)})
    engine.delete(101)
    before = snapshot(engine)
    assert engine.compact() == 1
    assert sorted(p.name for p in state.iterdir()) == ["ACKED", "CURRENT", "LOCK", "snapshots", "wal-1.log"]
    assert snapshot(engine) == before and engine.index.dead_count == 0
    engine.update(100, embeddings={"unified": vec(9)})
    after = snapshot(engine)
    engine.close()
    # leftovers of a compaction that crashed before its CURRENT was written are ignored and removed
    (state / "snapshots" / "2").mkdir()
    (state / "wal-2.log").write_bytes(b"junk")
    reopened = Engine.open(base, state)
    assert reopened.generation == 1 and snapshot(reopened) == after
    assert not (state / "wal-2.log").exists() and not (state / "snapshots" / "2").exists()


def test_compaction_runs_after_the_configured_number_of_changes(base: Path, tmp_path: Path) -> None:
    engine = Engine.open(base, tmp_path / "state", replace(engine_defaults().store, compact_after_records=3))
    for i in range(7):
        engine.add(100 + i, ["text:fresh"], {})
    assert engine.generation == 2 and engine.log_records == 1
    assert engine.search(parse("(term text:fresh)"), {}).total == 7


def test_one_writer_many_readers(base: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    writer = Engine.open(base, state)
    with pytest.raises(EngineLockedError, match="another process is writing"):
        Engine.open(base, state)
    writer.add(5, ["text:fresh"], {})
    reader = Engine.open(base, state, writable=False)
    assert reader.search(parse("(term text:fresh)"), {}).doc_ids.tolist() == [5]
    with pytest.raises(UpdateError, match="read-only"):
        reader.add(6, ["text:fresh"], {})


def test_validation_names_the_problem_and_batches_are_all_or_nothing(base: Path, tmp_path: Path) -> None:
    engine = Engine.open(base, tmp_path / "state")
    existing = int(engine.index.doc_ids[0])
    cases = [
        ({"op": "add", "doc_id": existing, "terms": []}, DocumentExistsError, "already exists"),
        ({"op": "update", "doc_id": 999, "terms": []}, DocumentNotFoundError, "does not exist"),
        ({"op": "delete", "doc_id": 999}, DocumentNotFoundError, "does not exist"),
        ({"op": "add", "doc_id": "7", "terms": []}, UpdateError, "not an integer"),
        ({"op": "add", "doc_id": 2**64}, UpdateError, "64 bits"),
        ({"op": "add", "doc_id": 7, "terms": ["bad"]}, UpdateError, "field:value"),
        ({"op": "add", "doc_id": 7, "terms": ["nn.unified:3"]}, UpdateError, "reserved"),
        ({"op": "add", "doc_id": 7, "terms": "text:a"}, UpdateError, "list of strings"),
        ({"op": "add", "doc_id": 7, "terms": [["text:a", "x"]]}, UpdateError, "must be a number"),
        ({"op": "add", "doc_id": 7, "terms": [["text:a", True]]}, UpdateError, "must be a number"),
        ({"op": "add", "doc_id": 7, "terms": {"text:a": float("nan")}}, UpdateError, "finite float32"),
        ({"op": "add", "doc_id": 7, "terms": {"text:a": 1e39}}, UpdateError, "finite float32"),
        ({"op": "add", "doc_id": 7, "terms": [["text:a", 1, 2]]}, UpdateError, "pair"),
        ({"op": "add", "doc_id": 7, "terms": [["text:a", 1], "text:A"]}, UpdateError, "given twice"),
        ({"op": "add", "doc_id": 7, "embeddings": {"nope": [1.0]}}, UpdateError, "unknown embedding key"),
        ({"op": "add", "doc_id": 7, "embeddings": {"unified": [1.0, 2.0]}}, UpdateError, "2 dimensions"),
        ({"op": "add", "doc_id": 7, "embeddings": {"unified": [0.0] * 16}}, UpdateError, "norm 0"),
        ({"op": "add", "doc_id": 7, "embeddings": {"unified": [float("nan")] * 16}}, UpdateError, "NaN"),
        (
            {"op": "add", "doc_id": 7, "embeddings": {"unified": ["x"] * 16}},
            UpdateError,
            "not a list of numbers",
        ),
        ({"op": "upsert", "doc_id": 7}, UpdateError, "op must be"),
    ]
    for request, error, message in cases:
        with pytest.raises(error, match=message):
            engine.apply([request])
    with pytest.raises(DocumentNotFoundError, match="change 2: doc_id 8 does not exist"):
        engine.apply(
            [
                {"op": "add", "doc_id": 7, "terms": ["text:fresh"]},
                {"op": "delete", "doc_id": 7},
                {"op": "delete", "doc_id": 8},
            ]
        )
    assert engine.document(7) is None and engine.log_records == 0
    assert (
        engine.apply(
            [
                {"op": "add", "doc_id": 7, "terms": ["text:fresh"]},
                {"op": "delete", "doc_id": 7},
                {"op": "add", "doc_id": 7, "terms": ["text:other"]},
            ]
        )
        == 3
    )
    assert engine.document(7)["terms"] == ["text:other"]
    records = (tmp_path / "state" / "wal-0.log").read_bytes()
    assert json.loads(records[8 : 8 + int.from_bytes(records[:4], "little")])["op"] == "add"
