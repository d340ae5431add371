"""Positives (clicks, impressions, hard positives), random negatives and easy:hard mixing, hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.mining.negatives import mix, random_negatives, same_query_clicks
from ebr.mining.positives import hard_positives, positives

TRAIN = np.arange(1, 13)  # session 13 is held out


def test_hard_positive_rule_on_hand_made_sessions(hand_made_db):
    got = hard_positives(hand_made_db, TRAIN, window_minutes=30)
    assert list(map(tuple, got[["session_id", "doc_id", "source_session_id"]].to_numpy())) == [
        (1, 11, 2),  # reformulated 3 minutes later, clicked 11
        (9, 13, 10),  # the first clicked follow-up within the window wins, all its clicks
        (9, 14, 10),
    ]
    assert set(got["kind"]) == {"hard_positive"}
    # a wider window reaches session 4 (90 minutes later); session 12's follow-up is held out
    wide = hard_positives(hand_made_db, TRAIN, window_minutes=120)
    assert (3, 12) in set(map(tuple, wide[["session_id", "doc_id"]].to_numpy()))
    assert 12 not in set(wide["session_id"])
    with_13 = hard_positives(hand_made_db, np.arange(1, 14), window_minutes=30)
    assert (12, 16, 13) in set(map(tuple, with_13[["session_id", "doc_id", "source_session_id"]].to_numpy()))
    with pytest.raises(ValueError, match="hard_positive_window_minutes"):
        hard_positives(hand_made_db, TRAIN, window_minutes=0)


def test_positive_strategies(hand_made_db):
    clicks = positives(hand_made_db, TRAIN, "clicks")
    assert set(clicks["kind"]) == {"click"} and 13 not in set(clicks["session_id"])
    assert len(clicks) == 7  # 11, 12, 21, 31, 13, 14, 15
    imps = positives(hand_made_db, TRAIN, "impressions")
    assert len(imps) == 14 and set(imps["kind"]) == {"click", "impression"}
    both = positives(hand_made_db, TRAIN, "clicks+hard", hard_positive_window_minutes=30)
    assert len(both) == 10 and (both["kind"] == "hard_positive").sum() == 3
    hard = positives(hand_made_db, TRAIN, "hard", hard_positive_window_minutes=30)
    assert len(hard) == 3
    assert hard["vertical"].tolist() == ["people"] * 3
    with pytest.raises(ValueError, match="mining.positives"):
        positives(hand_made_db, TRAIN, "likes")


def test_same_query_clicks_finds_clicks_for_the_same_text(hand_made_db):
    pairs = same_query_clicks(hand_made_db, TRAIN, np.array([5, 6, 1])).pairs()
    # "chess" and "Chess " normalise to the same text: doc 21 is a likely false negative for both
    assert set(map(tuple, pairs.to_numpy())) == {(5, 21), (6, 21)}


def test_random_negatives_stay_in_the_vertical_and_off_the_positives(hand_made_db):
    docs = hand_made_db.execute("SELECT doc_id, vertical FROM documents").df()
    pos = positives(hand_made_db, TRAIN, "clicks")
    neg = random_negatives(pos, docs, per_positive=6, seed=1)
    assert len(neg) == 6 * len(pos) and set(neg["kind"]) == {"easy"}
    merged = neg.merge(docs, on="doc_id").merge(
        pos[["session_id", "vertical"]].drop_duplicates(), on="session_id"
    )
    assert (merged["vertical_x"] == merged["vertical_y"]).all()
    pairs = set(map(tuple, pos[["session_id", "doc_id"]].to_numpy()))
    assert not pairs & set(map(tuple, neg[["session_id", "doc_id"]].to_numpy()))
    again = random_negatives(pos.sample(frac=1, random_state=3), docs, per_positive=6, seed=1)
    pd.testing.assert_frame_equal(
        neg.sort_values(list(neg.columns[:3])).reset_index(drop=True),
        again.sort_values(list(neg.columns[:3])).reset_index(drop=True),
    )


def test_random_negatives_fail_when_positives_cover_the_pool(hand_made_db):
    docs = pd.DataFrame({"doc_id": [31], "vertical": ["events"]})
    pos = pd.DataFrame({"session_id": [8], "doc_id": [31], "vertical": ["events"]})
    with pytest.raises(ValueError, match="session 8"):
        random_negatives(pos, docs, per_positive=1, seed=0)


def _negs(n: int, kind: str, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": np.arange(start, start + n) // 3,
            "positive_doc_id": 7,
            "doc_id": np.arange(start, start + n),
            "kind": kind,
            "rank": pd.array([pd.NA if kind == "easy" else 101] * n, dtype="Int32"),
            "score": 0.0,
        }
    )


@pytest.mark.parametrize(
    ("n_easy", "n_hard", "ratio", "kept_easy", "kept_hard"),
    [
        (1000, 50, 100, 1000, 10),
        (1050, 50, 100, 1000, 10),  # easy trimmed to an exact multiple
        (1000, 5, 100, 500, 5),  # hard pool limits: easy trimmed to 100 x 5
        (30, 40, 1, 30, 30),
        (100, 1000, 0.5, 100, 200),
        (99, 10, 100, 0, 0),  # not enough easy negatives for one hard one
        (20, 7, 0, 0, 7),  # hard only
        (20, 7, float("inf"), 20, 0),  # easy only
    ],
)
def test_mix_realises_the_ratio_exactly(n_easy, n_hard, ratio, kept_easy, kept_hard):
    out = mix(_negs(n_easy, "easy"), _negs(n_hard, "hard", start=10_000), ratio, seed=4)
    counts = out["kind"].value_counts()
    assert counts.get("easy", 0) == kept_easy and counts.get("hard", 0) == kept_hard
    if kept_hard and 0 < ratio < float("inf"):
        assert counts["easy"] / counts["hard"] == ratio


def test_mix_is_deterministic_and_order_free():
    easy, hard = _negs(500, "easy"), _negs(40, "hard", start=10_000)
    a = mix(easy, hard, 10, seed=2)
    b = mix(easy.sample(frac=1, random_state=1), hard.sample(frac=1, random_state=5), 10, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(mix(easy, hard, 10, seed=3))
    with pytest.raises(ValueError, match="easy_hard_ratio"):
        mix(easy, hard, -1, seed=0)
