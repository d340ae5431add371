"""Each mined-data contract catches a planted violation, naming the failing rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.contracts.mined import MinedContractError, MinedPromise, validate_mined
from ebr.mining.negatives import mix, random_negatives
from ebr.mining.positives import positives

TRAIN, HELDOUT = np.arange(1, 13), np.array([13])
PROMISE = MinedPromise(
    negatives="mixed", random_per_positive=2, hard_per_positive=1, easy_hard_ratio=2, window=(101, 500)
)


@pytest.fixture
def mined(hand_made_db) -> tuple[pd.DataFrame, pd.DataFrame]:
    docs = hand_made_db.execute("SELECT doc_id, vertical FROM documents").df()
    pos = positives(hand_made_db, TRAIN, "clicks+hard", hard_positive_window_minutes=30)
    easy = random_negatives(pos, docs, per_positive=2, seed=1)
    hard = random_negatives(pos, docs, per_positive=1, seed=2).assign(
        kind="hard", rank=pd.array([150] * len(pos), dtype="Int32"), score=np.float32(0.3)
    )
    return pos, mix(easy, hard, 2, seed=0)


def _validate(con, pos, neg, promise=PROMISE, heldout=HELDOUT):
    return validate_mined(con, pos, neg, heldout, promise, max_positives=100)


def test_valid_mined_tables_pass_with_counts(hand_made_db, mined):
    pos, neg = mined
    report = _validate(hand_made_db, pos, neg)
    assert all(report[t]["success"] for t in ("mined_positives", "mined_negatives", "mined_counts"))
    assert report["counts"]["easy_hard_ratio"] == 2.0
    assert report["counts"]["hard"] == len(pos)


def _fails(con, pos, neg, rule_words: str, row_words: str = "", **kwargs) -> MinedContractError:
    with pytest.raises(MinedContractError) as err:
        _validate(con, pos, neg, **kwargs)
    message = str(err.value)
    assert rule_words in message and row_words in message, message
    return err.value


def test_negative_equal_to_a_positive_is_caught(hand_made_db, mined):
    pos, neg = mined
    neg = neg.copy()
    neg.loc[3, "doc_id"] = pos.loc[pos.session_id == neg.loc[3, "session_id"], "doc_id"].iloc[0]
    _fails(
        hand_made_db,
        pos,
        neg,
        "no negative equals a positive",
        f"row 3 (session_id={neg.loc[3, 'session_id']}",
    )


def test_hard_negative_outside_the_window_is_caught(hand_made_db, mined):
    pos, neg = mined
    neg = neg.copy()
    row = neg.index[neg.kind == "hard"][1]
    neg.loc[row, "rank"] = 100
    _fails(hand_made_db, pos, neg, "rank window", f"row {row} ")


def test_wrong_easy_hard_ratio_is_caught(hand_made_db, mined):
    pos, neg = mined
    neg = neg.drop(index=neg.index[neg.kind == "easy"][0]).reset_index(drop=True)
    _fails(hand_made_db, pos, neg, "easy:hard ratio matches")
    # random-only promises no hard negatives and exactly positives x random_per_positive easy ones
    only_easy = neg[neg.kind == "easy"]
    random_promise = MinedPromise("random", 2, 1, float("inf"), (101, 500))
    _fails(hand_made_db, pos, only_easy, "easy negatives within expected bounds", promise=random_promise)


def test_heldout_sessions_are_caught(hand_made_db, mined):
    pos, neg = mined
    _fails(hand_made_db, pos, neg, "no held-out evaluation session", "is held out", heldout=np.array([9]))
    # a hard positive whose clicked source session is held out
    source = pos.loc[pos.kind == "hard_positive", "source_session_id"].iloc[0]
    _fails(
        hand_made_db,
        pos,
        neg,
        "no held-out",
        f"source session {source} is held out",
        heldout=np.array([source]),
    )


def test_unknown_ids_are_caught(hand_made_db, mined):
    pos, neg = mined
    neg = neg.copy()
    neg.loc[0, "doc_id"] = 999
    _fails(hand_made_db, pos, neg, "every doc_id exists", "doc 999 is not in documents")
    pos2 = pos.copy()
    pos2.loc[1, "session_id"] = 777
    _fails(hand_made_db, pos2, mined[1], "every session_id exists", "session 777 is not in sessions")


def test_negative_from_another_vertical_is_caught(hand_made_db, mined):
    pos, neg = mined
    neg = neg.copy()
    row = neg.index[neg.session_id == 8][0]  # an events session
    neg.loc[row, "doc_id"] = 22  # a group
    _fails(hand_made_db, pos, neg, "document pool of its session's vertical", "doc 22 is in groups")


def test_too_few_positives_is_caught(hand_made_db, mined):
    pos, neg = mined
    strict = MinedPromise("mixed", 2, 1, 2, (101, 500), min_positives=1000)
    _fails(hand_made_db, pos, neg, "positives within expected bounds", promise=strict)


def test_duplicate_positive_is_caught(hand_made_db, mined):
    pos, neg = mined
    _fails(hand_made_db, pd.concat([pos, pos.iloc[[0]]], ignore_index=True), neg, "appears once")
