"""Units of the simulator: typos, queries, the incumbent retriever, graph helpers, draws."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ebr.simulator.assets import load_assets
from ebr.simulator.graph import csr, csr_gather, graph_statistics, reference_statistics
from ebr.simulator.queries import QueryMaker
from ebr.simulator.retriever import Global, Located, TermIndex
from ebr.simulator.sampling import Blocks, csr_contains, random_neighbour
from ebr.simulator.text import normalise, tokens
from ebr.simulator.typos import LENGTH_BUCKETS, TypoModel, edit_ops, edit_statistics, phonetic_rule

# ---- typos ---------------------------------------------------------------------------------------------


def test_edit_ops_and_phonetic_rules() -> None:
    assert edit_ops("the", "teh") == [("transposition", 1)]
    assert edit_ops("cat", "cart") == [("insertion", 2)]
    assert edit_ops("hello", "helo") == [("deletion", 2)]
    assert edit_ops("smith", "smyth") == [("substitution", 2)]
    assert edit_ops("smith", "smith") == []
    assert phonetic_rule("phone", "fone") == "ph>f"
    assert phonetic_rule("station", "stasion") == "tion>sion"
    assert phonetic_rule("smith", "smyth") == "i>y"
    assert phonetic_rule("smith", "jones") is None


def _typo_model(p_real: float = 0.0) -> TypoModel:
    a = load_assets()
    return TypoModel(a.misspellings, a.typo_stats["generator"], p_real)


def test_keyboard_edits_reproduce_the_measured_statistics() -> None:
    a = load_assets()
    words = [
        w.lower() for w in [*a.first_names["F"][0][:200], *a.first_names["M"][0][:200], *a.surnames[:400]]
    ]
    words += [
        w for cat in a.vocab["categories"].values() for t in cat["topics"] for w in tokens(t) if len(w) > 3
    ]
    model, rnd = _typo_model(), random.Random(0)
    pairs = [(w, model.keyboard_edits(w, rnd)) for w in (rnd.choice(words) for _ in range(5000))]
    got, real = edit_statistics(pairs), a.typo_stats["measured"]
    for k in real["op_share"]:
        assert got["op_share"][k] == pytest.approx(real["op_share"][k], abs=0.06), k
    for a_, b_ in zip(got["position_bins"], real["position_bins"], strict=True):
        assert a_ == pytest.approx(b_, abs=0.06)
    for bucket in LENGTH_BUCKETS:
        if got["length_share"][bucket] * got["pairs"] >= 300:
            for k, share in real["edit_count_by_length"][bucket].items():
                assert got["edit_count_by_length"][bucket][k] == pytest.approx(share, abs=0.07), (bucket, k)
    for kind, table in real["substitution"].items():
        for k, share in table.items():
            assert got["substitution"][kind][k] == pytest.approx(share, abs=0.08), (kind, k)


def test_misspell_prefers_real_misspellings() -> None:
    rnd = random.Random(1)
    real = load_assets().misspellings["restaurant"]
    typed, source = _typo_model(p_real=1.0).misspell("restaurant", rnd)
    assert source == "real" and typed in real
    typed, source = _typo_model(p_real=0.0).misspell("johnson", rnd)
    assert source in ("phonetic", "edit") and typed != "johnson"


# ---- queries -------------------------------------------------------------------------------------------


def _query_maker(
    forms: dict[str, dict[str, float]], misspelled: float = 0.0, spacing: float = 0.0
) -> QueryMaker:
    a = load_assets()
    shares = {v: forms.get(v, {"full": 1.0}) for v in ("people", "groups", "events")}
    return QueryMaker(
        shares,
        dict.fromkeys(shares, misspelled),
        _typo_model(),
        spacing,
        {"lower": 1.0},
        a.vocab["abbreviations"],
        a.vocab["optional_words"],
    )


PLACES = ("Louisville", "Kentucky", "KY")


@pytest.mark.parametrize(
    ("form", "title", "expected"),
    [
        ("full", "Louisville Moms Club", "louisville moms club"),
        ("place_omitted", "Louisville Moms Club", "moms club"),
        ("place_omitted", "Running Club of Louisville", "running club"),
        ("abbreviated", "Kentucky Mini Cooper Owners/Drivers Club", "ky mini owners club"),
    ],
)
def test_title_query_forms(form: str, title: str, expected: str) -> None:
    q = _query_maker({"groups": {form: 1.0}}).titled("groups", title, "Mini Cooper", PLACES, random.Random(0))
    assert (q.text, q.form) == (expected, form)


def test_optional_and_partial_title_queries() -> None:
    rnd = random.Random(0)
    qm = _query_maker({"groups": {"extra_words": 1.0}})
    optional = {normalise(w) for w in load_assets().vocab["optional_words"]}
    for _ in range(20):
        q = qm.titled("groups", "Mini Cooper Owners/Drivers Club", "Mini Cooper", PLACES, rnd)
        assert normalise(q.text).split()[-1] in {w.split()[-1] for w in optional}
    qm = _query_maker({"groups": {"partial": 1.0}})
    for _ in range(20):
        q = qm.titled("groups", "Mini Cooper Owners Club", "Mini Cooper", PLACES, rnd)
        assert "mini cooper owners club".startswith(q.text) and len(q.text) >= 2


def test_person_query_forms_and_perturbations() -> None:
    rnd = random.Random(0)
    assert (
        _query_maker({"people": {"first_name": 1.0}}).person("John", "Smith", "Seattle", rnd).text == "john"
    )
    assert (
        _query_maker({"people": {"reversed": 1.0}}).person("John", "Smith", "Seattle", rnd).text
        == "smith, john"
    )
    q = _query_maker({"people": {"partial": 1.0}}).person("John", "Smith", "Seattle", rnd)
    first, prefix = q.text.split()
    assert first == "john" and "smith".startswith(prefix) and prefix != "smith"
    q = _query_maker({"people": {"full": 1.0}}, misspelled=1.0).person("John", "Smith", "Seattle", rnd)
    assert q.form == "full+misspelled" and q.text != "john smith" and q.typo is not None
    q = _query_maker({"people": {"full": 1.0}}, spacing=1.0).person("John", "Smith", "Seattle", rnd)
    assert (q.text, q.form) == ("johnsmith", "full+spacing")


# ---- the incumbent retriever ---------------------------------------------------------------------------

TITLES = ["Mini Cooper Owners/Drivers Club", "Moms Club", "Moms Club", "Louisville Moms Club", "Running Club"]
CITIES = np.array([0, 1, 0, 0, -1])  # 0: Louisville, 1: Denver; rows are in popularity order


def _index() -> TermIndex:
    terms = [
        tokens(t) + (["louisville"] if c == 0 else ["denver"] if c == 1 else [])
        for t, c in zip(TITLES, CITIES, strict=True)
    ]
    return TermIndex(terms, np.stack([CITIES, np.full(len(CITIES), -1)], axis=1), scan_block=2)


def test_term_matching_is_exact_and_conjunctive() -> None:
    idx = _index()
    assert idx.search("mini cooper", [Global()], 10).tolist() == [0]
    assert idx.search("Mini-Cooper owners drivers CLUB", [Global()], 10).tolist() == [0]
    assert idx.search("mini cooper nw", [Global()], 10).tolist() == []  # an optional word fails the match
    assert idx.search("minicooper", [Global()], 10).tolist() == []
    assert idx.search("mini coper", [Global()], 10).tolist() == []
    assert idx.search("moms club", [Global()], 10).tolist() == [1, 2, 3]
    assert idx.search("moms club louisville", [Global()], 10).tolist() == [2, 3]  # location words match
    assert idx.search("club", [Global()], 2).tolist() == [0, 1]


def test_sources_come_first_in_their_order() -> None:
    idx = _index()
    assert idx.search("moms club", [Located(0), Global()], 10).tolist() == [2, 3, 1]
    assert idx.search("moms club", [np.array([3]), Located(0), Global()], 10).tolist() == [3, 2, 1]
    assert idx.search("moms club", [lambda: np.array([3, 1]), Global()], 2).tolist() == [1, 3]
    assert idx.search("moms club", [Global()], 10, exclude=1).tolist() == [2, 3]


# ---- graph and draws -----------------------------------------------------------------------------------


def test_csr_helpers() -> None:
    ptr, adj = csr(4, np.array([[0, 1], [0, 2], [1, 2], [2, 3]]))
    assert ptr.tolist() == [0, 2, 4, 7, 8] and adj.tolist() == [1, 2, 0, 2, 0, 1, 3, 2]
    assert csr_gather(ptr, adj, np.array([3, 0])).tolist() == [2, 1, 2]
    assert csr_contains(ptr, adj, np.array([0, 0, 2, 3]), np.array([2, 3, 3, 0])).tolist() == [
        True,
        False,
        True,
        False,
    ]
    rng = np.random.default_rng(0)
    got = random_neighbour(ptr, adj, np.array([3, 3, 0]), rng)
    assert got[0] == 2 and got[1] == 2 and got[2] in (1, 2)


def test_graph_statistics_on_a_known_graph() -> None:
    # A triangle 0-1-2 with a pendant 3 on node 2.
    s = graph_statistics(4, np.array([[0, 1], [0, 2], [1, 2], [2, 3]]), None, np.random.default_rng(0))
    assert s["average_degree"] == 2.0 and s["max_degree"] == 3
    assert s["average_clustering"] == pytest.approx((1 + 1 + 1 / 3 + 0) / 4, abs=1e-4)
    assert s["transitivity"] == pytest.approx(3 / 5, abs=1e-4)


def test_missing_reference_graph_gives_none(tmp_path: Path) -> None:
    assert reference_statistics(tmp_path / "absent.txt") is None


def test_blocks_draw_within_their_key() -> None:
    rng = np.random.default_rng(0)
    key = np.array([5, 3, 5, 3, 9])
    uniform = Blocks(key)
    draws = uniform.draw(np.array([5] * 200 + [4]), rng)
    assert set(draws[:200].tolist()) == {0, 2} and draws[200] == -1
    weighted = Blocks(key, np.array([1.0, 1.0, 0.0, 1.0, 1.0]))
    assert set(weighted.draw(np.full(100, 5), rng).tolist()) == {0}
    assert set(weighted.draw_range(np.array([0] * 100), np.array([6] * 100), rng).tolist()) == {0, 1, 3}
