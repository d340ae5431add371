"""Failed writes of the realtime state: every write, fsync, truncate and rename of the log and of compaction
made to fail in turn; an answer that failed changed nothing, now or after a restart, and a retry succeeds."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_fixtures import clustered, corpus_index, make_corpus
from faults import count_calls, inject

from ebr.config import StoreConfig, engine_defaults
from ebr.retrieval.documents import Delete, Document, Update
from ebr.retrieval.query import parse
from ebr.retrieval.store import Engine, ReadOnlyEngineError, encode_batch, encode_change

CORPUS = make_corpus(seed=21, n=60)
BASE_IDS = [int(d) for d in CORPUS.doc_ids]
Q = clustered(np.random.default_rng(8), 1)[0]
NN = {key: parse(f"(nn {key} :radius 1.5 :nprobe 16)") for key in ("unified", "text")}
STORE = engine_defaults().store


def vec(seed: int) -> list[float]:
    return clustered(np.random.default_rng(seed), 1)[0].tolist()


CHANGES = {
    "add": [
        {
            "op": "add",
            "doc_id": 8,
            "terms": ["vertical:people", ["text:new", 2.0]],
            "embeddings": {"unified": vec(2)},
        }
    ],
    "update": [{"op": "update", "doc_id": 7, "terms": ["text:changed"], "embeddings": {"text": vec(3)}}],
    "delete": [{"op": "delete", "doc_id": BASE_IDS[0]}],
    "batch": [
        {"op": "add", "doc_id": 9, "terms": ["text:new"], "embeddings": {}},
        {"op": "update", "doc_id": BASE_IDS[1], "terms": None, "embeddings": {"unified": vec(4)}},
        {"op": "delete", "doc_id": 7},
    ],
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, trained) -> Path:
    """An engine folder (the builder's format) of 60 documents."""
    folder = tmp_path_factory.mktemp("base") / "engine"
    folder.mkdir()
    corpus_index(CORPUS, trained).save(folder)
    return folder


def state(engine: Engine) -> tuple[dict[int, Any], dict[str, dict[int, float]]]:
    """Every document the tests touch, and the answers of a wide nn search per key."""
    docs = {d: engine.document(d) for d in [*BASE_IDS, 7, 8, 9]}
    for doc in docs.values():
        if doc is not None:
            doc["terms"] = sorted(doc["terms"])  # compaction keeps the terms, not their order
    answers = {}
    for key, root in NN.items():
        hits = engine.search(root, {key: Q})
        answers[key] = dict(zip(hits.doc_ids.tolist(), np.round(hits.scores, 5).tolist(), strict=True))
    return docs, answers


def prepared(base: Path, folder: Path, config: StoreConfig = STORE) -> Engine:
    """An engine with one change logged already (doc 7)."""
    engine = Engine.open(base, folder, config)
    engine.add(7, ["vertical:people", "text:seven"], {"unified": vec(1), "text": vec(5)})
    return engine


def reopened_state(base: Path, folder: Path, config: StoreConfig = STORE) -> Any:
    engine = Engine.open(base, folder, config)
    try:
        return state(engine)
    finally:
        engine.close()


def attempt(action: Any, fail_at: int) -> bool:
    """Run `action` with the `fail_at`-th counted call failing; returns whether it was acknowledged."""
    with inject(fail_at) as faults:
        try:
            action()
            acknowledged = True
        except OSError:
            acknowledged = False
    assert faults.failed is not None, faults.calls
    return acknowledged


@pytest.mark.parametrize("auto_compact", [False, True], ids=["log", "log+compaction"])
@pytest.mark.parametrize("name", list(CHANGES))
def test_a_failed_change_is_never_applied_and_a_retry_succeeds(
    base: Path, tmp_path: Path, name: str, auto_compact: bool
) -> None:
    config = replace(STORE, compact_after_records=2 if auto_compact else 0)
    requests = CHANGES[name]
    engine = prepared(base, tmp_path / "count", config)
    before = state(engine)
    n = count_calls(lambda: engine.apply(requests))
    after = state(engine)
    engine.close()
    assert n >= 2 and after != before
    for fail_at in range(1, n + 1):
        # the failure, then the client's retry on the same engine
        folder = tmp_path / f"retry-{fail_at}"
        engine = prepared(base, folder, config)
        acknowledged = attempt(lambda e=engine: e.apply(requests), fail_at)
        assert acknowledged == (auto_compact and fail_at > 2), fail_at  # the log's write and fsync
        assert state(engine) == (after if acknowledged else before), fail_at
        if not acknowledged:
            assert engine.apply(requests) == len(requests)
            assert state(engine) == after, fail_at
        engine.close()
        assert reopened_state(base, folder, config) == after, fail_at
        # the failure, then a restart
        folder = tmp_path / f"restart-{fail_at}"
        engine = prepared(base, folder, config)
        acknowledged = attempt(lambda e=engine: e.apply(requests), fail_at)
        engine.close()
        assert reopened_state(base, folder, config) == (after if acknowledged else before), fail_at


def test_compaction_that_fails_anywhere_leaves_the_engine_and_its_files_as_they_were(
    base: Path, tmp_path: Path
) -> None:
    def engine_with_changes(folder: Path) -> Engine:
        engine = prepared(base, folder)
        engine.apply(CHANGES["add"] + CHANGES["delete"] + CHANGES["update"])
        return engine

    engine = engine_with_changes(tmp_path / "count")
    before = state(engine)
    n = count_calls(engine.compact)
    assert state(engine) == before
    engine.close()
    assert n > 10
    late = {"op": "add", "doc_id": 9, "terms": ["text:late"], "embeddings": {"unified": vec(6)}}
    for fail_at in range(1, n + 1):
        # a change after the failure survives a restart, and compaction works again afterwards
        folder = tmp_path / f"restart-{fail_at}"
        engine = engine_with_changes(folder)
        attempt(engine.compact, fail_at)  # after its commit point, compaction reports success
        assert state(engine) == before, fail_at
        engine.apply([late])
        after = state(engine)
        engine.close()
        assert reopened_state(base, folder) == after, fail_at
        reopened = Engine.open(base, folder)
        reopened.compact()
        assert state(reopened) == after, fail_at
        reopened.close()
        assert reopened_state(base, folder) == after, fail_at
        # a retry in the same engine
        folder = tmp_path / f"retry-{fail_at}"
        engine = engine_with_changes(folder)
        attempt(engine.compact, fail_at)
        engine.compact()
        assert state(engine) == before, fail_at
        engine.close()
        assert reopened_state(base, folder) == before, fail_at


def test_a_file_size_limit_refuses_a_change_and_the_retry_is_kept_once(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    code = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        from ebr.retrieval.store import Engine
        engine = Engine.open(Path({str(base)!r}), Path({str(folder)!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))  # writes past it: EFBIG
        acked, refused = [], []
        for doc_id in range(100, 150):
            for _ in range(2):  # the client retries once
                try:
                    engine.add(doc_id, ["text:fresh"], {{}})
                    acked.append(doc_id)
                    break
                except OSError as exc:
                    refused.append(str(exc))
                    resource.setrlimit(resource.RLIMIT_FSIZE, (-1, -1))  # space is freed
        print(json.dumps([acked, refused, engine.writable]))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    assert out.returncode == 0, out.stderr
    acked, refused, writable = json.loads(out.stdout)
    assert acked == list(range(100, 150)) and writable
    assert len(refused) == 1 and "wal-0.log: append failed, nothing changed (File too large)" in refused[0]
    engine = Engine.open(base, folder)
    assert sorted(engine.search(parse("(term text:fresh)"), {}).doc_ids.tolist()) == acked
    assert engine.log_records == 50  # the refused attempt left nothing in the log


@pytest.mark.parametrize("fail_at", [1, 2], ids=["write", "fsync"])
def test_a_disk_that_refuses_even_the_cut_turns_the_engine_read_only(
    base: Path, tmp_path: Path, fail_at: int
) -> None:
    engine = prepared(base, tmp_path / "state")
    before = state(engine)
    with inject(fail_at, sticky=True), pytest.raises(ReadOnlyEngineError, match="may or may not be logged"):
        engine.apply(CHANGES["add"])
    assert not engine.writable and "wal-0.log: cutting a failed append back to" in engine.read_only_reason
    assert state(engine) == before
    with pytest.raises(ReadOnlyEngineError, match="read-only .*cutting a failed append"):
        engine.apply(CHANGES["add"])
    engine.close()
    engine = prepared(base, tmp_path / "again")
    engine.apply(CHANGES["add"])
    after = state(engine)
    engine.close()
    # the outcome of a change whose bytes were written but not synced is unknown, never a broken log
    assert reopened_state(base, tmp_path / "state") in ([before] if fail_at == 1 else [before, after])


def test_replay_accepts_a_retried_add_and_never_refuses_a_record(
    base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "state"
    engine = prepared(base, folder)
    seven = engine.document(7)
    engine.close()
    log = folder / "wal-0.log"
    add_seven = log.read_bytes()
    eight = Document(8, ["text:first"], {}, {})
    eight_later = Document(8, ["text:second"], {"unified": np.asarray(vec(2), np.float32)}, {})
    base_doc = Document(BASE_IDS[2], ["text:replaced"], {}, {})
    log.write_bytes(
        add_seven
        + add_seven  # a client's retry whose first attempt was logged too
        + b"".join(
            encode_change(c)
            for c in (
                eight,
                eight_later,
                base_doc,
                Delete(123),
                Update(456, ["text:x"], {}, {}),
            )
        )
    )
    with caplog.at_level(logging.WARNING, logger="ebr.retrieval.store"):
        engine = Engine.open(base, folder)
    assert engine.document(7) == seven
    assert engine.document(8) == {"doc_id": 8, "terms": ["text:second"], "payloads": {}, "keys": ["unified"]}
    assert engine.document(BASE_IDS[2])["terms"] == ["text:replaced"]
    assert engine.document(123) is None and engine.document(456) is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("record 1 repeats the add of doc_id 7; skipped" in m for m in messages), messages
    assert any("record 3 adds doc_id 8, which exists; applied as a replacement" in m for m in messages)
    assert any("deletes doc_id 123, which does not exist; skipped" in m for m in messages)
    assert any("updates doc_id 456, which does not exist; skipped" in m for m in messages)
    engine.add(10, ["text:after"], {})
    after = state(engine)
    engine.close()
    assert reopened_state(base, folder) == after


def closed_log(base: Path, tmp_path: Path) -> tuple[Path, Path, bytes, tuple[Any, Any]]:
    """A prepared state folder, closed: (folder, its log, the log's bytes, the engine's state)."""
    folder = tmp_path / "state"
    engine = prepared(base, folder)
    expected = state(engine)
    engine.close()
    log = folder / "wal-0.log"
    return folder, log, log.read_bytes(), expected


def test_a_torn_tail_is_dropped_with_a_warning(
    base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, log, good, expected = closed_log(base, tmp_path)
    torn = encode_change(Document(8, ["text:torn"], {}, {}))
    for cut in (3, 8, len(torn) - 1):
        log.write_bytes(good + torn[:cut])
        with caplog.at_level(logging.WARNING, logger="ebr.retrieval.store"):
            assert reopened_state(base, folder) == expected
        assert f"dropped a torn last batch ({cut} bytes at byte {len(good)}" in caplog.text
        assert log.read_bytes() == good


def test_a_batch_the_log_ends_inside_is_dropped_whole(
    base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, log, good, expected = closed_log(base, tmp_path)
    batch = [Document(8, ["text:a"], {}, {}), Document(9, ["text:b"], {}, {}), Delete(7)]
    records = [encode_change(c, len(batch) - 1 - i) for i, c in enumerate(batch)]
    assert encode_batch(batch) == b"".join(records)
    for whole in (1, 2):  # a crash after `whole` complete records of the batch, and part of the next
        log.write_bytes(good + b"".join(records[:whole]) + records[whole][:5])
        with caplog.at_level(logging.WARNING, logger="ebr.retrieval.store"):
            assert reopened_state(base, folder) == expected
        assert f"{whole} whole records)" in caplog.text
        assert log.read_bytes() == good
    log.write_bytes(good + encode_batch(batch))
    engine = Engine.open(base, folder)
    assert engine.document(9) is not None and engine.document(7) is None
    engine.close()


@pytest.mark.parametrize("compact", [False, True], ids=["same-generation", "compacted"])
def test_an_engine_waiting_for_the_lock_takes_it_when_freed(
    base: Path, tmp_path: Path, compact: bool
) -> None:
    folder = tmp_path / "state"
    writer = prepared(base, folder)
    waiting = Engine.open(base, folder, fall_back_read_only=True)
    assert not waiting.writable and "LOCK is held by another engine" in waiting.read_only_reason
    with pytest.raises(ReadOnlyEngineError, match="read-only"):
        waiting.apply(CHANGES["add"])
    assert not waiting.take_write_lock()
    writer.apply(CHANGES["add"])  # written while the other one waits
    if compact:
        writer.compact()
    writer.close()
    assert waiting.apply(CHANGES["batch"]) == 3  # takes the lock, catching up with doc 8 first
    assert waiting.writable and waiting.read_only_reason is None and waiting.generation == int(compact)
    reference = prepared(base, tmp_path / "reference")
    reference.apply(CHANGES["add"])
    reference.apply(CHANGES["batch"])
    expected = state(reference)
    reference.close()
    assert state(waiting) == expected
    waiting.close()
    assert reopened_state(base, folder) == expected
