"""Offline hard negatives: the rank window, exclusions, strategies, sharding and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.mining.hard import Embedded, offline_hard_negatives
from ebr.mining.keys import sample_keys, shard_rows
from ebr.mining.negatives import ExcludedDocs


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world() -> tuple[Embedded, Embedded, pd.DataFrame]:
    rng = np.random.default_rng(0)
    docs = Embedded(np.arange(1000, 1600, dtype=np.int64), _unit(rng.normal(size=(600, 16))))
    queries = Embedded(np.arange(50, dtype=np.int64) * 3 + 7, _unit(rng.normal(size=(50, 16))))
    # 1 to 3 positives per session, some of them highly ranked so they fall inside the window
    rows = []
    for i, sid in enumerate(queries.ids):
        order = np.argsort(-(docs.vectors @ queries.vectors[i]))
        for r in rng.choice([0, 5, 40, 120, 300], size=1 + i % 3, replace=False):
            rows.append((int(sid), int(docs.ids[order[r]])))
    return queries, docs, pd.DataFrame(rows, columns=["session_id", "doc_id"])


def _exact_ranks(queries: Embedded, docs: Embedded) -> dict[tuple[int, int], int]:
    ranks = {}
    for i, sid in enumerate(queries.ids):
        order = np.argsort(-(docs.vectors @ queries.vectors[i]), kind="stable")
        for r, j in enumerate(order):
            ranks[(int(sid), int(docs.ids[j]))] = r + 1
    return ranks


def test_negatives_come_from_the_window_with_their_exact_rank(world):
    queries, docs, pos = world
    frame, stats = offline_hard_negatives(queries, docs, pos, window=(11, 60), per_positive=3, block_size=7)
    truth = _exact_ranks(queries, docs)
    assert len(frame) == 3 * len(pos) == stats.negatives
    assert frame["rank"].between(11, 60).all()
    for row in frame.itertuples():
        assert truth[(row.session_id, row.doc_id)] == row.rank
    assert sum(stats.rank_histogram.values()) == len(frame)


def test_top_strategy_takes_the_window_start(world):
    queries, docs, pos = world
    frame, _ = offline_hard_negatives(queries, docs, pos, window=(101, 500), per_positive=2, strategy="top")
    truth = _exact_ranks(queries, docs)
    for sid, group in frame.groupby("session_id"):
        known = set(pos.loc[pos.session_id == sid, "doc_id"])
        expected = [
            d
            for (s, d), r in sorted(truth.items(), key=lambda kv: kv[1])
            if s == sid and r >= 101 and d not in known
        ][: len(group)]
        assert sorted(group["doc_id"]) == sorted(expected)
        assert group["rank"].min() >= 101


def test_known_positives_and_excluded_pairs_are_never_negatives(world):
    queries, docs, pos = world
    wide, _ = offline_hard_negatives(queries, docs, pos, window=(1, 400), per_positive=5, seed=3)
    excluded = wide.groupby("session_id").head(4)[["session_id", "doc_id"]]
    frame, stats = offline_hard_negatives(
        queries,
        docs,
        pos,
        window=(1, 400),
        per_positive=5,
        seed=3,
        excluded=ExcludedDocs.from_pairs(excluded),
    )
    pairs = set(map(tuple, frame[["session_id", "doc_id"]].to_numpy()))
    assert not pairs & set(map(tuple, pos.to_numpy()))
    assert not pairs & set(map(tuple, excluded.to_numpy()))
    assert stats.excluded_in_window >= len(excluded)
    # a session's negatives are distinct, each positive gets exactly per_positive
    assert not frame.duplicated(["session_id", "doc_id"]).any()
    assert (frame.groupby(["session_id", "positive_doc_id"]).size() == 5).all()


def test_shortfall_is_reported_when_the_window_is_too_narrow(world):
    queries, docs, pos = world
    frame, stats = offline_hard_negatives(queries, docs, pos, window=(1, 3), per_positive=2)
    assert stats.short_positives > 0
    assert stats.negatives == len(frame) < stats.wanted


def test_same_seed_same_table_whatever_block_size_or_row_order(world):
    queries, docs, pos = world
    a, _ = offline_hard_negatives(queries, docs, pos, window=(20, 200), per_positive=2, block_size=4, seed=9)
    perm = np.random.default_rng(1).permutation(len(queries.ids))
    shuffled = Embedded(queries.ids[perm], queries.vectors[perm])
    b, _ = offline_hard_negatives(
        shuffled,
        docs,
        pos.sample(frac=1, random_state=2),
        window=(20, 200),
        per_positive=2,
        block_size=64,
        seed=9,
    )
    pd.testing.assert_frame_equal(a, b)
    c, _ = offline_hard_negatives(queries, docs, pos, window=(20, 200), per_positive=2, seed=10)
    assert not a["doc_id"].equals(c["doc_id"])


def test_uniform_sampling_spreads_over_the_window(world):
    queries, docs, pos = world
    frame, stats = offline_hard_negatives(queries, docs, pos, window=(101, 500), per_positive=4, seed=5)
    # each of the 8 buckets of 50 ranks gets a fair share (expected ~12.5%)
    shares = np.array(list(stats.rank_histogram.values())) / len(frame)
    assert shares.min() > 0.06 and shares.max() < 0.2


def test_shard_indexes_one_fraction_of_the_documents(world):
    queries, docs, pos = world
    rows = shard_rows(docs.ids, 0.25, seed=1)
    assert len(rows) == 150 and np.array_equal(rows, shard_rows(docs.ids, 0.25, seed=1))
    frame, stats = offline_hard_negatives(queries, docs, pos, window=(5, 50), shard=0.25, seed=1)
    assert stats.indexed_documents == 150
    assert set(frame["doc_id"]) <= set(docs.ids[rows])


def test_ivf_index_gives_window_ranks(world):
    queries, docs, pos = world
    frame, _ = offline_hard_negatives(
        queries, docs, pos, window=(10, 40), index="ivf", nlist=8, nprobe=8, per_positive=1
    )
    # nprobe = nlist makes IVF exhaustive: ranks are the exact ones
    truth = _exact_ranks(queries, docs)
    assert all(truth[(r.session_id, r.doc_id)] == r.rank for r in frame.itertuples())


@pytest.mark.parametrize(
    "kwargs", [{"window": (0, 10)}, {"window": (10, 5)}, {"per_positive": 0}, {"strategy": "hardest"}]
)
def test_bad_knobs_name_the_parameter(world, kwargs):
    queries, docs, pos = world
    with pytest.raises(ValueError, match="mining.hard"):
        offline_hard_negatives(queries, docs, pos, **kwargs)


def test_sample_keys_are_deterministic_and_spread():
    a = sample_keys(1, np.arange(10_000), np.zeros(10_000))
    assert np.array_equal(a, sample_keys(1, np.arange(10_000), np.zeros(10_000)))
    assert len(np.unique(a)) == 10_000
    top_bits = (a >> np.uint64(60)).astype(int)
    assert np.bincount(top_bits, minlength=16).min() > 500


def test_grouped_exclusions_equal_their_pairs(world):
    """Sessions sharing a group skip the group's documents: the same table as the expanded pairs."""
    queries, docs, pos = world
    sessions = np.unique(pos["session_id"])
    grouped = ExcludedDocs(
        pd.DataFrame({"session_id": sessions, "group": np.arange(len(sessions)) % 3}),
        pd.DataFrame({"group": np.repeat([0, 1, 2], 40), "doc_id": docs.ids[np.arange(120) * 3]}),
    )
    expanded = ExcludedDocs.from_pairs(grouped.pairs())
    args = dict(window=(1, 300), per_positive=3, seed=4, block_size=5)
    a, sa = offline_hard_negatives(queries, docs, pos, excluded=grouped, **args)
    b, sb = offline_hard_negatives(queries, docs, pos, excluded=expanded, **args)
    pd.testing.assert_frame_equal(a, b)
    assert sa.excluded_in_window == sb.excluded_in_window > 0
    banned = set(map(tuple, grouped.pairs().to_numpy()))
    assert not banned & set(map(tuple, a[["session_id", "doc_id"]].to_numpy()))
