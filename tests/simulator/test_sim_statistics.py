"""The world's statistics: the paper's problems exist, and the graph looks like SNAP ego-Facebook.

Tolerances (tiny world, seed 3; docs/simulator.md states them):
- name-collision rate >= 30%; typo rate 5-15%; failed-session rate 20-60%;
- people intents: friends 50% +- 5 points, friends of friends 20% +- 5 points;
- term matching re-ranked with the searcher's context beats popularity alone: people by >= 12%, groups by
  >= 5% relative (the small world, a slow test, by >= 15% on both);
- graph: average degree within a factor 2 of SNAP's, average clustering >= 0.3 and within 0.2 of SNAP's,
  degree CV within a factor 1.5, p90/p50 within a factor 2, tail exponent within 0.6 of SNAP's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ebr.simulator.config import load_scale
from ebr.simulator.graph import reference_statistics
from ebr.simulator.report import reference_path
from ebr.simulator.world import simulate


def _report(world: Path) -> dict:
    return json.loads((world / "report.json").read_text())


def test_the_papers_problems_exist(tiny_world: Path) -> None:
    r = _report(tiny_world)
    assert r["name_collision_rate"] >= 0.3
    assert r["people_search_target_name_shared_rate"] >= 0.3
    assert 0.05 <= r["typo_rate"] <= 0.15
    assert 0.2 <= r["failed_session_rate"] <= 0.6
    assert r["counts"]["sessions"]["reformulations"] > 0.1 * r["counts"]["sessions"]["total"]
    kinds = r["intent_kinds"]["people"]
    assert kinds["friend"] == pytest.approx(0.5, abs=0.05)
    assert kinds["friend_of_friend"] == pytest.approx(0.2, abs=0.05)
    headroom = r["context_headroom"]
    assert headroom["people"]["relative_gain"] >= 0.12
    assert headroom["groups"]["relative_gain"] >= 0.05


def test_query_forms_follow_the_config(tiny_world: Path) -> None:
    cfg = load_scale("tiny")
    sessions = pq.read_table(tiny_world / "sessions.parquet").to_pandas()
    intents = pq.read_table(tiny_world / "ground_truth" / "intents.parquet").to_pandas()
    m = sessions.merge(intents, on="session_id")
    first = m[m.reformulates_session_id.isna()]  # reformulations use the corrected full form
    for v in ("people", "groups"):
        base = first[first.vertical == v].query_form.str.split("+").str[0].value_counts(normalize=True)
        for form, share in cfg.sessions.query_forms[v].items():
            # Titles without a place or an abbreviable word fall back to dropping a word.
            if v == "people" or form in ("full", "extra_words", "partial"):
                assert base.get(form, 0.0) == pytest.approx(share, abs=0.04), (v, form)
    r = _report(tiny_world)
    misspelled = sum(s for f, s in r["query_forms"]["people"].items() if "misspelled" in f)
    assert misspelled == pytest.approx(r["typo_rate_by_vertical"]["people"], abs=0.01)


def test_typos_reproduce_the_birkbeck_edit_statistics(tiny_world: Path) -> None:
    t = _report(tiny_world)["typo_edit_statistics"]
    world, real = t["world"], t["birkbeck"]
    assert world["pairs"] >= 200
    for key in ("op_share", "edit_count"):
        for k in real[key]:
            assert world[key][k] == pytest.approx(real[key][k], abs=0.08), (key, k)
    for a, b in zip(world["position_bins"], real["position_bins"], strict=True):
        assert a == pytest.approx(b, abs=0.08)


def test_graph_statistics_against_snap(tiny_world: Path) -> None:
    g = _report(tiny_world)["graph"]
    world, snap = g["world"], g["snap_ego_facebook"]
    assert world["average_clustering"] >= 0.3
    if snap is None:
        pytest.skip(g["snap_note"])
    assert snap["average_degree"] / 2 <= world["average_degree"] <= snap["average_degree"] * 2
    assert abs(world["average_clustering"] - snap["average_clustering"]) <= 0.2
    assert snap["degree_cv"] / 1.5 <= world["degree_cv"] <= snap["degree_cv"] * 1.5
    assert snap["p90_over_p50"] / 2 <= world["p90_over_p50"] <= snap["p90_over_p50"] * 2
    assert abs(world["tail_exponent"] - snap["tail_exponent"]) <= 0.6


def test_snap_reference_statistics_are_the_published_ones() -> None:
    path = reference_path(load_scale("tiny").report.reference_graph)
    snap = reference_statistics(path)
    if snap is None:
        pytest.skip(f"SNAP ego-Facebook not found at {path}")
    assert (snap["nodes"], snap["edges"]) == (4039, 88234)
    assert snap["average_degree"] == pytest.approx(43.69, abs=0.01)
    assert snap["average_clustering"] == pytest.approx(0.6055, abs=0.0005)  # networkx average_clustering
    assert snap["transitivity"] == pytest.approx(0.5192, abs=0.0005)
    assert snap["max_degree"] == 1045


@pytest.mark.e2e
def test_small_world_statistics(tmp_path: Path) -> None:
    r = _report(simulate("small", 7, tmp_path / "small"))
    assert r["counts"]["users"] == 30000 and r["counts"]["sessions"]["total"] >= 80000
    assert r["name_collision_rate"] >= 0.3
    for v in ("people", "groups"):
        assert r["context_headroom"][v]["relative_gain"] >= 0.15, v
    world, snap = r["graph"]["world"], r["graph"]["snap_ego_facebook"]
    assert world["average_clustering"] >= 0.3
    if snap is not None:
        assert snap["average_degree"] / 2 <= world["average_degree"] <= snap["average_degree"] * 2
