"""Shard runners (ebr/runners.py): every runner returns what the serial one does, in shard order."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest

from ebr.mining.hard import Embedded, offline_hard_negatives
from ebr.runners import SERIAL, open_shards

LOCAL_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def _block_sum(vectors: np.ndarray, b: slice) -> np.ndarray:
    return vectors[b].sum(axis=1)


def test_row_shards_cover_the_rows_in_order() -> None:
    assert SERIAL.rows(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert SERIAL.rows(0, 4) == []
    with open_shards({"kind": "serial", "shard_rows": 3}) as shards:
        assert shards.rows(7) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    with pytest.raises(ValueError, match="shard size must be >= 1"):
        SERIAL.rows(5, -1)


def test_bad_runner_config_names_the_key() -> None:
    kinds = "runner.kind must be one of serial, threads, processes, dask"
    with pytest.raises(ValueError, match=kinds), open_shards({"kind": "spark"}):
        pass
    with pytest.raises(ValueError, match="runner.shard_rows must be >= 1"), open_shards({"shard_rows": -2}):
        pass


@pytest.mark.parametrize(
    "rcfg",
    [
        {"kind": "threads", "workers": 3},
        {"kind": "processes", "workers": 2},
        {"kind": "dask", "cluster": LOCAL_CLUSTER},
    ],
    ids=["threads", "processes", "dask"],
)
def test_runners_match_serial(rcfg: dict) -> None:
    vectors = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    fn, items = partial(_block_sum, vectors), SERIAL.rows(len(vectors), 128)
    expected = np.concatenate(SERIAL.map(fn, items))
    with open_shards(rcfg) as shards:
        assert shards.runner.kind == rcfg["kind"]
        assert np.array_equal(np.concatenate(shards.map(fn, items)), expected)


def test_hard_negatives_are_the_same_on_every_runner() -> None:
    rng = np.random.default_rng(3)
    docs = Embedded(np.arange(100, 700), _unit(rng.normal(size=(600, 16))))
    queries = Embedded(np.arange(1, 81), _unit(rng.normal(size=(80, 16))))
    pos = pd.DataFrame({"session_id": np.repeat(np.arange(1, 81), 2), "doc_id": rng.choice(docs.ids, 160)})
    mine = partial(offline_hard_negatives, queries, docs, pos, window=(5, 60), per_positive=2, block_size=9)
    serial, serial_stats = mine()
    for rcfg in ({"kind": "threads"}, {"kind": "dask", "cluster": LOCAL_CLUSTER}):
        with open_shards(rcfg) as shards:
            frame, stats = mine(shards=shards)
        pd.testing.assert_frame_equal(frame, serial)
        assert stats.excluded_in_window == serial_stats.excluded_in_window
        assert stats.rank_histogram == serial_stats.rank_histogram


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_shard_progress_is_reported_up_to_done() -> None:
    reports: list[tuple[str, float]] = []
    vectors = np.ones((100, 2), np.float32)
    collect = lambda what, fraction: reports.append((what, fraction))  # noqa: E731
    with open_shards({"kind": "threads"}, progress=collect) as shards:
        shards.map(partial(_block_sum, vectors), shards.rows(100, 30), "inference")
    assert reports == [("inference", 0.25), ("inference", 0.5), ("inference", 0.75), ("inference", 1.0)]
