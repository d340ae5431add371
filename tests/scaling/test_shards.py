"""Shard runners (ebr/runners.py): every runner returns what the serial one does, in shard order."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest

from ebr.mining.mine import Embedded, offline_hard_negatives
from ebr.progress import use_progress
from ebr.runners import current_runner, map_shards, row_shards, use_runner

LOCAL_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


def _block_sum(vectors: np.ndarray, b: slice) -> np.ndarray:
    return vectors[b].sum(axis=1)


def test_row_shards_cover_the_rows_in_order() -> None:
    assert row_shards(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert row_shards(0, 4) == []
    with use_runner({"kind": "serial", "shard_rows": 3}):
        assert row_shards(7) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    with pytest.raises(ValueError, match="shard size must be >= 1"):
        row_shards(5, -1)


def test_bad_runner_config_names_the_key() -> None:
    kinds = "runner.kind must be one of serial, threads, processes, dask"
    with pytest.raises(ValueError, match=kinds), use_runner({"kind": "spark"}):
        pass
    with pytest.raises(ValueError, match="runner.shard_rows must be >= 1"), use_runner({"shard_rows": -2}):
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
    fn, shards = partial(_block_sum, vectors), row_shards(len(vectors), 128)
    expected = np.concatenate(map_shards(fn, shards))
    with use_runner(rcfg) as runner:
        assert current_runner() is runner and runner.kind == rcfg["kind"]
        assert np.array_equal(np.concatenate(map_shards(fn, shards)), expected)
    assert current_runner().kind == "serial"  # uninstalled on exit


def test_hard_negatives_are_the_same_on_every_runner() -> None:
    rng = np.random.default_rng(3)
    docs = Embedded(np.arange(100, 700), _unit(rng.normal(size=(600, 16))))
    queries = Embedded(np.arange(1, 81), _unit(rng.normal(size=(80, 16))))
    pos = pd.DataFrame({"session_id": np.repeat(np.arange(1, 81), 2), "doc_id": rng.choice(docs.ids, 160)})
    mine = partial(offline_hard_negatives, queries, docs, pos, window=(5, 60), per_positive=2, block_size=9)
    serial, serial_stats = mine()
    for rcfg in ({"kind": "threads"}, {"kind": "dask", "cluster": LOCAL_CLUSTER}):
        with use_runner(rcfg):
            frame, stats = mine()
        pd.testing.assert_frame_equal(frame, serial)
        assert stats.excluded_in_window == serial_stats.excluded_in_window
        assert stats.rank_histogram == serial_stats.rank_histogram


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_shard_progress_is_reported_up_to_done() -> None:
    reports: list[tuple[str, float]] = []
    vectors = np.ones((100, 2), np.float32)
    collect = lambda what, fraction: reports.append((what, fraction))  # noqa: E731
    with use_progress(collect), use_runner({"kind": "threads"}):
        map_shards(partial(_block_sum, vectors), row_shards(100, 30), "inference")
    assert reports == [("inference", 0.25), ("inference", 0.5), ("inference", 0.75), ("inference", 1.0)]
