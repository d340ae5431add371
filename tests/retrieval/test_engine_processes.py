"""Several processes over one engine state: memory-mapped snapshots (read-only, the same answers as a full
load, before and after changes and compaction) and shared writers (a write acknowledged by one is seen by
the next search of every other, compaction is followed, a killed writer leaves a state the others read)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from engine_fixtures import FACTORIES, clustered, corpus_index, make_corpus
from faults import inject
from reference import EPSILON, evaluate, quantised_view

from ebr.config import engine_defaults
from ebr.retrieval.executor import execute
from ebr.retrieval.index import EngineIndex
from ebr.retrieval.query import parse
from ebr.retrieval.store import (
    Engine,
    EngineLockedError,
    ReadOnlyEngineError,
    encode_batch,
    read_acked,
    read_log,
)

CORPUS = make_corpus(seed=31, n=300, payloads=True)
BASE_IDS = [int(d) for d in CORPUS.doc_ids]
STORE = engine_defaults().store
SHARED = replace(STORE, shared=True, lock_wait_s=2.0)
IN_MEMORY = replace(STORE, mmap=False)
ROOT = Path(__file__).resolve().parents[2]
QUERIES = {key: clustered(np.random.default_rng(40 + i), 3) for i, key in enumerate(FACTORIES)}
EXPRESSIONS = [
    "(nn unified :radius 1.2 :nprobe 8)",
    "(nn text :k 20 :nprobe 4)",
    "(and (term vertical:people) (nn unified :radius 1.5 :nprobe 16))",
    "(or (term text:w1 :score) (nn text :radius 0.9 :nprobe 8))",
    "(and (term location:seattle) (not (term text:w2)))",
    "(term text:w3 :min 0.3 :score)",
    "(term text:fresh)",
]
FRESH = parse("(term text:fresh)")


def vec(seed: int) -> list[float]:
    return clustered(np.random.default_rng(seed), 1)[0].tolist()


# every kind of change: adds with and without embeddings, an update of terms only (codes copied), one of an
# embedding only, deletes of base documents and of a new one
CHANGES: list[dict[str, Any]] = [
    {
        "op": "add",
        "doc_id": 1,
        "terms": ["vertical:people", ["text:fresh", 2.0]],
        "embeddings": {"unified": vec(1)},
    },
    {"op": "add", "doc_id": 2, "terms": ["text:fresh", "location:seattle"], "embeddings": {}},
    {
        "op": "add",
        "doc_id": 3,
        "terms": ["vertical:groups", "text:w1"],
        "embeddings": {"text": vec(3), "unified": vec(4)},
    },
    {"op": "update", "doc_id": BASE_IDS[0], "terms": ["vertical:people", ["text:w3", 0.5]], "embeddings": {}},
    {"op": "update", "doc_id": BASE_IDS[1], "terms": None, "embeddings": {"unified": vec(5)}},
    {"op": "delete", "doc_id": BASE_IDS[2]},
    {"op": "delete", "doc_id": 2},
    {"op": "update", "doc_id": 3, "terms": ["text:fresh"], "embeddings": {}},
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, trained) -> Path:
    """An engine folder (the builder's format) of 300 documents with payloads."""
    folder = tmp_path_factory.mktemp("base") / "engine"
    folder.mkdir()
    corpus_index(CORPUS, trained).save(folder)
    return folder


def rounded(scores: np.ndarray) -> list[float | None]:
    """Scores comparable with == (NaN: no score, as None)."""
    return [None if math.isnan(s) else round(s, 6) for s in scores.tolist()]


def answers(index: EngineIndex) -> list[tuple[list[int], list[float]]]:
    out = []
    for expr in EXPRESSIONS:
        for row in range(3):
            hits = execute(index, parse(expr), {key: q[row] for key, q in QUERIES.items()})
            out.append((hits.doc_ids.tolist(), rounded(hits.scores)))
    return out


def state(engine: Engine) -> tuple[int, list[Any]]:
    """The live documents and the answers of a few expressions."""
    out = []
    for expr in EXPRESSIONS:
        hits = engine.search(parse(expr), {key: q[0] for key, q in QUERIES.items()})
        out.append((hits.doc_ids.tolist(), rounded(hits.scores)))
    return engine.index.live_count, out


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def reference_docs(changes: list[dict[str, Any]]) -> dict[int, dict[str, float | None]]:
    """The reference's documents after `changes` (terms -> payload)."""
    docs = CORPUS.doc_terms()
    for change in changes:
        if change["op"] == "delete":
            docs.pop(change["doc_id"])
        elif change["terms"] is not None:
            terms = {}
            for t in change["terms"]:
                name, payload = (t, None) if isinstance(t, str) else (t[0], float(np.float32(t[1])))
                terms[name] = payload
            docs[change["doc_id"]] = terms
    return docs


def test_a_mapped_load_is_read_only_and_changes_give_the_answers_of_a_full_load(
    base: Path, tmp_path: Path
) -> None:
    files = digest(base)
    mapped, loaded = EngineIndex.load(base, mmap=True), EngineIndex.load(base)
    assert mapped.mapped and not loaded.mapped
    for array in (
        mapped._postings,
        mapped._postings_offsets,
        mapped._forward,
        mapped._payloads,
        mapped.doc_ids,
    ):
        assert not array.flags.writeable and type(array) is np.ndarray
    with pytest.raises(ValueError, match="read-only"):
        mapped._postings[0] = 1
    assert {f.ivf.direct_map.type for f in mapped.fields.values()} == {faiss.DirectMap.Array}  # every doc
    assert answers(mapped) == answers(loaded)

    for index in (mapped, loaded):
        engine = Engine(index, base, tmp_path / "unused", 0, 0, STORE, None)
        index.apply(engine._validate(CHANGES))
    assert not mapped.mapped  # the first change copied the faiss lists in, with a hashtable direct map
    assert {f.ivf.direct_map.type for f in mapped.fields.values()} == {faiss.DirectMap.Hashtable}
    assert answers(mapped) == answers(loaded)
    docs = reference_docs(CHANGES)
    views = {key: quantised_view(mapped, key) for key in FACTORIES}
    checked = 0
    for expr in EXPRESSIONS:
        vectors = {key: q[0] for key, q in QUERIES.items()}
        expected = evaluate(parse(expr), docs, views, vectors)
        if expected.ambiguous:
            continue
        hits = execute(mapped, parse(expr), vectors)
        got = dict(zip(hits.doc_ids.tolist(), hits.scores.tolist(), strict=True))
        assert set(got) == set(expected.scores), expr
        for doc_id, score in got.items():
            want = expected.scores[doc_id]
            assert math.isnan(score) if want is None else abs(score - want) < EPSILON
        checked += 1
    assert checked >= 5

    for name, index in (("mapped", mapped), ("loaded", loaded)):
        (tmp_path / name).mkdir()
        index.compacted().save(tmp_path / name)
    assert digest(tmp_path / "mapped") == digest(tmp_path / "loaded")  # compaction: the same files
    assert digest(base) == files  # the mapped snapshot was never written


def test_a_mapped_engine_changes_and_compacts_as_an_in_memory_one(base: Path, tmp_path: Path) -> None:
    mapped = Engine.open(base, tmp_path / "mapped")
    loaded = Engine.open(base, tmp_path / "loaded", IN_MEMORY)
    assert mapped.index.mapped and not loaded.index.mapped
    unchanged = Engine.open(base, tmp_path / "unchanged")
    assert unchanged.compact() == 1 and state(unchanged) == state(loaded)  # compaction of mapped lists
    for engine in (mapped, loaded):
        engine.apply(CHANGES[:4])
        engine.apply(CHANGES[4:])
    assert state(mapped) == state(loaded)
    assert mapped.compact() == loaded.compact() == 1
    assert mapped.index.mapped and not loaded.index.mapped  # back on the new snapshot's shared pages
    assert state(mapped) == state(loaded)
    for engine in (mapped, loaded):
        engine.apply(
            [
                {"op": "delete", "doc_id": 1},
                {"op": "add", "doc_id": 9, "terms": ["text:fresh"], "embeddings": {"text": vec(9)}},
            ]
        )
    assert state(mapped) == state(loaded)
    for engine in (mapped, loaded, unchanged):
        engine.close()
    assert state(Engine.open(base, tmp_path / "mapped", writable=False)) == state(loaded)


def test_shared_writers_see_each_others_changes_before_their_next_search(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    a, b = Engine.open(base, folder, SHARED), Engine.open(base, folder, SHARED)
    reader = Engine.open(base, folder, SHARED, writable=False)
    reference = Engine.open(base, tmp_path / "reference", IN_MEMORY)
    assert a.writable and b.writable and not reader.writable
    for n, change in enumerate(CHANGES):
        (a if n % 2 else b).apply([change])
        reference.apply([change])
        assert state(a) == state(b) == state(reader) == state(reference), n
    assert b.compact() == 1
    assert state(a) == state(reader) == state(reference) and a.generation == reader.generation == 1
    a.apply([{"op": "add", "doc_id": 11, "terms": ["text:fresh"], "embeddings": {"unified": vec(11)}}])
    reference.apply(
        [{"op": "add", "doc_id": 11, "terms": ["text:fresh"], "embeddings": {"unified": vec(11)}}]
    )
    assert state(b) == state(reader) == state(reference)
    assert a.compact() == 2
    b.apply([{"op": "delete", "doc_id": 11}])
    reference.apply([{"op": "delete", "doc_id": 11}])
    assert state(a) == state(reader) == state(reference) and a.generation == 2
    with pytest.raises(ReadOnlyEngineError, match="read-only"):
        reader.apply([{"op": "delete", "doc_id": 1}])
    for engine in (a, b, reader):
        engine.close()
    assert sorted(p.name for p in folder.iterdir()) == ["ACKED", "CURRENT", "LOCK", "snapshots", "wal-2.log"]
    assert state(Engine.open(base, folder)) == state(reference)


def test_read_only_engines_follow_a_lifetime_writer(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    writer = Engine.open(base, folder)
    waiting = Engine.open(base, folder, fall_back_read_only=True)
    reader = Engine.open(base, folder, writable=False)
    writer.apply(CHANGES[:3])
    assert state(reader) == state(waiting) == state(writer)
    writer.compact()
    writer.apply(CHANGES[3:])
    assert state(reader) == state(waiting) == state(writer) and reader.generation == 1
    writer.close()
    assert waiting.take_write_lock() and waiting.apply([{"op": "delete", "doc_id": 1}]) == 1
    assert state(reader) == state(waiting)


def test_followers_never_see_an_unacknowledged_append(base: Path, tmp_path: Path) -> None:
    """A batch in the log past ACKED (being appended, or left by a crash) is not replayed by followers; the
    next writer, holding the lock, replays a complete one (as a restart does) and cuts a torn one."""
    folder = tmp_path / "state"
    a, b = Engine.open(base, folder, SHARED), Engine.open(base, folder, SHARED)
    a.apply([CHANGES[0]])
    before = state(b)
    log = folder / "wal-0.log"
    acked = log.stat().st_size
    pending = a._validate([{"op": "add", "doc_id": 21, "terms": ["text:fresh"], "embeddings": {}}])
    with open(log, "ab") as f:
        f.write(encode_batch(pending))
    assert state(b) == before and b.document(21) is None  # complete, but not acknowledged
    with open(log, "ab") as f:
        f.write(encode_batch(pending)[:-3].replace(b'"doc_id":21', b'"doc_id":22'))  # and a torn one
    assert state(b) == before
    b.apply([{"op": "add", "doc_id": 23, "terms": ["text:fresh"], "embeddings": {}}])
    assert a.document(21) is not None and a.document(22) is None and a.document(23) is not None
    assert [c.doc_id for c in read_log(log, repair=False)] == [1, 21, 23] and log.stat().st_size > acked
    fd = os.open(folder / "ACKED", os.O_RDONLY)
    assert read_acked(fd) == (0, log.stat().st_size)
    os.close(fd)


def test_a_shared_writer_whose_cut_fails_keeps_the_lock(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    a = Engine.open(base, folder, SHARED)
    b = Engine.open(base, folder, replace(SHARED, lock_wait_s=0.2))
    with inject(1, sticky=True), pytest.raises(ReadOnlyEngineError, match="may or may not be logged"):
        a.apply([CHANGES[0]])
    assert not a.writable and "cutting a failed append" in a.read_only_reason
    with pytest.raises(ReadOnlyEngineError, match="LOCK: busy for more than 0.2 s"):
        b.apply([CHANGES[1]])
    assert b.document(1) is None  # searches go on
    a.close()
    assert b.apply([CHANGES[1]]) == 1 and b.document(2) is not None


def test_a_shared_open_refuses_a_state_a_lifetime_writer_holds(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    writer = Engine.open(base, folder)
    with pytest.raises(EngineLockedError, match="not in shared mode"):
        Engine.open(base, folder, replace(SHARED, lock_wait_s=0.1))
    writer.close()
    Engine.open(base, folder, SHARED).close()


WORKER = textwrap.dedent("""
    import json, sys
    from dataclasses import replace
    from pathlib import Path
    from ebr.config import engine_defaults
    from ebr.retrieval.query import parse
    from ebr.retrieval.store import Engine
    engine = Engine.open(Path(sys.argv[1]), Path(sys.argv[2]), replace(engine_defaults().store, shared=True))
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "apply":
            out = engine.apply(command["changes"])
        elif command["op"] == "adds":  # one change per call, as many clients would send them
            for doc_id in range(command["first"], command["first"] + command["n"]):
                engine.apply([{"op": "add", "doc_id": doc_id, "terms": ["text:fresh"], "embeddings": {}}])
            out = command["n"]
        elif command["op"] == "compact":
            out = engine.compact()
        else:
            out = sorted(engine.search(parse("(term text:fresh)"), {}).doc_ids.tolist())
        print(json.dumps({"out": out, "generation": engine.generation}), flush=True)
""")


class Worker:
    """An engine in a process of its own, driven by JSON lines."""

    def __init__(self, base: Path, folder: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(base), str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.read_line() == "ready"

    def read_line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the worker died"
        return line.strip()

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        return json.loads(self.read_line())

    def __call__(self, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.answer()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0


def test_worker_processes_share_writes_and_compactions(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    a, b = Worker(base, folder), Worker(base, folder)
    try:
        add = {"op": "add", "doc_id": 1, "terms": ["text:fresh"], "embeddings": {}}
        assert a(op="apply", changes=[add])["out"] == 1
        assert b(op="search")["out"] == [1]  # acknowledged by a: seen by b's next search
        assert b(op="apply", changes=[{"op": "delete", "doc_id": 1}])["out"] == 1
        assert a(op="search")["out"] == []
        a.send(op="adds", first=100, n=40)  # both write at once
        b.send(op="adds", first=200, n=40)
        assert a.answer()["out"] == b.answer()["out"] == 40
        expected = [*range(100, 140), *range(200, 240)]
        assert a(op="search")["out"] == b(op="search")["out"] == expected
        assert b(op="compact")["out"] == 1
        assert a(op="search") == {"out": expected, "generation": 1}
        assert a(op="apply", changes=[add])["generation"] == 1
        assert b(op="search")["out"] == sorted([1, *expected])
    finally:
        a.close()
        b.close()
    engine = Engine.open(base, folder, writable=False)
    assert sorted(engine.search(FRESH, {}).doc_ids.tolist()) == sorted([1, *expected])
    assert engine.generation == 1 and engine.log_records == 1


def test_a_writer_killed_mid_write_leaves_a_state_the_others_read_and_write(
    base: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "state"
    code = textwrap.dedent(f"""
        from dataclasses import replace
        from pathlib import Path
        from ebr.config import engine_defaults
        from ebr.retrieval.store import Engine
        store = replace(engine_defaults().store, shared=True)
        engine = Engine.open(Path({str(base)!r}), Path({str(folder)!r}), store)
        for i in range(100000):
            engine.add(10_000 + i, ["text:fresh"] + [f"text:x{{j}}" for j in range(200)], {{}})
            print(i, flush=True)
    """)
    follower = Engine.open(base, folder, SHARED)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    acked = -1
    assert child.stdout is not None
    for line in child.stdout:
        acked = int(line)
        if acked >= 30:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    seen = {d - 10_000 for d in follower.search(FRESH, {}).doc_ids.tolist()}
    assert set(range(acked + 1)) <= seen  # every acknowledged change, perhaps one more (logged, not acked)
    follower.add(5, ["text:fresh"], {})  # takes the lock the dead writer held, repairs a torn tail
    after = {d - 10_000 for d in follower.search(FRESH, {}).doc_ids.tolist()}
    assert set(range(acked + 1)) | {5 - 10_000} <= after
    fresh = Engine.open(base, folder, writable=False)
    assert sorted(fresh.search(FRESH, {}).doc_ids.tolist()) == sorted(d + 10_000 for d in after)
    assert len(read_log(folder / "wal-0.log", repair=False)) == fresh.log_records == len(after)


def test_searches_follow_while_a_write_waits_for_the_lock(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    a, b = Engine.open(base, folder, SHARED), Engine.open(base, folder, SHARED)
    b.apply([CHANGES[1]])  # doc 2, which a has not replayed yet
    with open(folder / "LOCK", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process's long turn (a compaction, say)
        writing = threading.Thread(target=a.apply, args=([CHANGES[0]],))
        writing.start()
        time.sleep(0.05)  # a's write now waits for the LOCK
        assert a.document(2) is not None and writing.is_alive()  # a's searches follow b meanwhile
    writing.join()
    assert b.document(1) is not None
