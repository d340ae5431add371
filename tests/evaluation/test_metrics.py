"""nDCG@k, Recall@k and MRR@k against pytrec_eval (trec_eval), on a fixture and on random runs."""

from __future__ import annotations

import math

import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from ebr.evaluation.metrics import evaluate, ndcg_at_k, per_query, rank, rankings, recall_at_k

KS = (1, 2, 3, 5, 10)

QRELS = {
    "graded": {"a": 2, "b": 1, "c": 0, "e": 3, "d": -1},  # a negative grade gains nothing
    "ties": {"x": 1, "y": 1, "z": 0},
    "short": {"p": 1, "q": 2, "r": 1},  # fewer than k results
    "no_relevant": {"a": 0, "b": 0},
    "missing": {"a": 1},  # not in the run
    "empty": {"a": 1},  # in the run with no documents
    "judged_nothing": {},  # no qrels at all: never evaluated
}
RUN = {
    "graded": {"a": 0.9, "b": 0.9, "c": 0.95, "d": 2.0, "e": 0.1, "f": 0.5},
    "ties": {"x": 1.0, "y": 1.0, "w": 1.0, "z": 1.0 + 1e-12, "v": 0.5},  # 1 + 1e-12 ties 1.0 as float32
    "short": {"q": 0.2, "s": 0.3},
    "no_relevant": {"a": 1.0, "c": 2.0},
    "empty": {},
    "judged_nothing": {"a": 1.0},
    "no_qrels": {"a": 1.0},
}


def pytrec(qrels: dict, run: dict, ks=KS) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query values under this module's names (MRR@k derived from recip_rank)."""
    cut = ",".join(map(str, ks))
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"recall.{cut}", "recip_rank"})
    out = {}
    for query, m in evaluator.evaluate(run).items():
        rr = m["recip_rank"]
        out[query] = {f"ndcg@{k}": m[f"ndcg_cut_{k}"] for k in ks}
        out[query] |= {f"recall@{k}": m[f"recall_{k}"] for k in ks}
        out[query] |= {f"mrr@{k}": rr if rr > 0 and round(1 / rr) <= k else 0.0 for k in ks}
    return out


def assert_close(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for query, values in theirs.items():
        assert ours[query].keys() == values.keys()
        for name, value in values.items():
            assert ours[query][name] == pytest.approx(value, abs=1e-9), (query, name)


def test_fixture_agrees_with_pytrec_eval() -> None:
    assert_close(per_query(QRELS, RUN, KS, missing="skip"), pytrec(QRELS, RUN))


def test_fixture_values() -> None:
    scores = per_query(QRELS, RUN, KS, missing="skip")
    # d (2.0), c (0.95), then the 0.9 tie broken by id descending: b before a
    assert rank(RUN["graded"]) == ["d", "c", "b", "a", "f", "e"]
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert scores["graded"]["ndcg@3"] == pytest.approx((1 / math.log2(4)) / ideal)
    assert rank(RUN["ties"]) == ["z", "y", "x", "w", "v"]
    assert scores["ties"]["mrr@1"] == 0.0 and scores["ties"]["mrr@2"] == 0.5
    assert scores["short"]["recall@10"] == pytest.approx(1 / 3)
    assert all(v == 0.0 for v in scores["no_relevant"].values())
    assert all(v == 0.0 for v in scores["empty"].values())
    assert "missing" not in scores and "judged_nothing" not in scores and "no_qrels" not in scores


def test_missing_queries_score_zero_by_default() -> None:
    zero, skip = per_query(QRELS, RUN, KS), per_query(QRELS, RUN, KS, missing="skip")
    assert zero.keys() == skip.keys() | {"missing"}
    assert all(v == 0.0 for v in zero["missing"].values())
    means_zero, means_skip = evaluate(QRELS, RUN, KS), evaluate(QRELS, RUN, KS, missing="skip")
    for name, value in means_skip.items():
        assert value == pytest.approx(sum(s[name] for s in skip.values()) / len(skip))  # BEIR's mean
        assert means_zero[name] == pytest.approx(value * len(skip) / (len(skip) + 1))


def test_ranked_lists_and_integer_ids() -> None:
    ranked = {query: rank(scores) for query, scores in RUN.items()}
    assert per_query(QRELS, ranked, KS) == per_query(QRELS, RUN, KS)
    # integer ids tie-break as their strings do in pytrec_eval: "10" < "9", so 9 ranks first
    qrels, run = {1: {10: 1, 9: 0}}, {1: {10: 0.5, 9: 0.5, 100: 0.5}}
    assert rank(run[1]) == [9, 100, 10]
    as_text = {str(q): {str(d): g for d, g in j.items()} for q, j in qrels.items()}
    run_text = {str(q): {str(d): s for d, s in r.items()} for q, r in run.items()}
    assert_close({str(q): v for q, v in per_query(qrels, run, KS).items()}, pytrec(as_text, run_text))


def test_errors() -> None:
    with pytest.raises(ValueError, match="ranked twice"):
        rankings({"q": {"a": 1}}, {"q": ["a", "b", "a"]})
    with pytest.raises(ValueError, match="missing"):
        per_query(QRELS, RUN, missing="beir")
    with pytest.raises(ValueError, match="cutoffs"):
        per_query(QRELS, RUN, ks=(0,))
    assert evaluate({}, RUN) == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}


DOCS = st.sampled_from("abcdefgh")
# few distinct scores, some equal as float32 but not as doubles, so that ties are frequent
SCORES = st.sampled_from([0.0, 0.5, 1.0, 1.0 + 1e-9, 1.0 + 1e-7, 2.0, -1.0, 3e38, 1e39])
QUERIES = st.sampled_from(["q1", "q2", "q3", "q4"])
JUDGED = st.dictionaries(DOCS, st.integers(-1, 3), max_size=6)
QRELS_ST = st.dictionaries(QUERIES, JUDGED, max_size=4)
RUN_ST = st.dictionaries(QUERIES, st.dictionaries(DOCS, SCORES, max_size=8), max_size=4)


@settings(max_examples=300, deadline=None)
@given(QRELS_ST, RUN_ST)
def test_random_runs_agree_with_pytrec_eval(qrels: dict, run: dict) -> None:
    assert_close(per_query(qrels, run, KS, missing="skip"), pytrec(qrels, run))


@settings(max_examples=200, deadline=None)
@given(QRELS_ST, RUN_ST)
def test_random_runs_properties(qrels: dict, run: dict) -> None:
    scores = per_query(qrels, run, KS)
    assert scores.keys() == {q for q, judged in qrels.items() if judged}
    for query, values in scores.items():
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in values.values())
        for name in ("ndcg", "recall", "mrr"):
            at = [values[f"{name}@{k}"] for k in KS]
            assert name == "ndcg" or at == sorted(at)  # recall and MRR grow with k
        judged = qrels[query]
        relevant = sum(g > 0 for g in judged.values())
        ideal = sorted(judged, key=lambda d: -judged[d])
        for k in KS:
            assert ndcg_at_k(ideal, judged, k) == pytest.approx(1.0 if relevant else 0.0)
            assert recall_at_k(ideal, judged, k) == pytest.approx(
                min(k, relevant) / relevant if relevant else 0
            )
