"""Query selection (ebr/selection/queries.py): each rule on a tiny world with known answers, the classifier's
features against a hand computation and its training on separable data, `without_nn` cases, and the stage's
round trip (trained, added to a candidate, served with `nn_skipped` as expected, verified, tampering found).

The world: 240 people documents `alpha<i> beta<i % 10>` with random unit embeddings; a request carries the
embedding of the document it looks for, and its query text is that document's first word (term matching
finds it) or a misspelling of it (only the (nn) part finds it)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebr import registry
from ebr.ann.quantize import build_index, set_nprobe
from ebr.config import QuerySelectionConfig, load_config, typed
from ebr.evaluation.gate import GateConfig, evaluate_gate
from ebr.models.ensembles import l2_normalize
from ebr.registry.publication import VersionPieces, add_stage, stage_version
from ebr.retrieval.build import build_engine
from ebr.retrieval.calibration import Sessions
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.query import NOTHING, parse, without_nn
from ebr.retrieval.retrievers import expression, single
from ebr.retrieval.service import SearchRequest, SearchService
from ebr.selection.queries import (
    LengthBand,
    QueryFeatures,
    QueryPolicy,
    hash64,
    load_policy,
    normalised_query,
    pair_hash,
    replay_labels,
    train_policy,
)
from ebr.steps.gate import served_recall
from ebr.steps.resume import keep_stage

DATASET = "test"
N_DOCS = 240
DOC_IDS = np.arange(N_DOCS, dtype=np.int64) + 100


def title(i: int) -> str:
    return f"alpha{i} beta{i % 10}"


def embeddings() -> np.ndarray:
    return l2_normalize(np.random.default_rng(0).standard_normal((N_DOCS, 12)).astype(np.float32))


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    docs = embeddings()
    tower = tmp_path / "tower"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"kind": "none"}))
    index = build_index("IVF4,PQ6x4", docs, "inner_product")
    set_nprobe(index, 4)
    documents = pd.DataFrame(
        {
            "doc_id": DOC_IDS,
            "vertical": ["people"] * N_DOCS,
            "title": [title(i) for i in range(N_DOCS)],
            "terms": [[*(f"text:{w}" for w in title(i).split()), "vertical:people"] for i in range(N_DOCS)],
        }
    )
    spec = single("unified")
    expr = expression(spec, "people", 4, radius=2.0)  # the nn part matches every document
    pieces = VersionPieces(
        doc_ids=DOC_IDS,
        documents=documents,
        embeddings={"unified": docs},
        indexes={"unified": index},
        towers={"unified": tower},
        retrievers={"unified": spec.to_dict()},
        serving={"default_vertical": "people", "verticals": {"people": {"key": "unified", "expr": expr}}},
        build_engine=build_engine,
        index_points={"unified": {"factory": "IVF4,PQ6x4", "nprobe": 4}},
    )
    staged = tmp_path / "candidate"
    stage_version(pieces, staged, {}, {}, "run-1", {})
    return staged


def request(i: int, misspelled: bool = False, searcher: int | None = None) -> SearchRequest:
    word = f"alhpa{i}" if misspelled else f"Alpha{i}"
    return SearchRequest(
        vertical="people", query_text=word, searcher_id=searcher, vector=embeddings()[i].tolist()
    )


def config(**rules: bool) -> QuerySelectionConfig:
    cfg = typed(load_config().query_selection)
    cfg.k = N_DOCS
    for name in ("repeat_click", "length", "classifier"):
        getattr(cfg, name).enabled = rules.get(name, False)
    return cfg


# ----- the rules alone


def test_pair_hashes_are_deterministic_and_normalise_the_query() -> None:
    assert normalised_query("  Jöhn   SMITH! ") == "john smith"
    assert hash64("abc") == hash64("abc") != hash64("abd")
    assert hash64("abc") == 6455300059550759896  # blake2b-64: the same in every process and release
    assert pair_hash(7, "John Smith") == pair_hash(7, "john  smith!") == hash64("7\x1fjohn smith")
    assert pair_hash(8, "john smith") != pair_hash(7, "john smith")
    assert pair_hash(None, "john smith") is None and pair_hash(7, " !! ") is None


def test_repeat_click_skips_only_the_searchers_clicked_queries() -> None:
    policy = QueryPolicy(repeat=frozenset({pair_hash(7, "alpha1"), pair_hash(9, "beta2 alpha2")}))
    root = parse("(and (term vertical:people) (or (term text:alpha1) (nn unified :radius 0.5 :nprobe 2)))")
    asked = {
        "repeat": SearchRequest(query_text="ALPHA1", searcher_id=7),
        "repeat, other token order is another query": SearchRequest(query_text="alpha2 beta2", searcher_id=9),
        "another searcher": SearchRequest(query_text="alpha1", searcher_id=8),
        "another query": SearchRequest(query_text="alpha2", searcher_id=7),
        "anonymous": SearchRequest(query_text="alpha1"),
    }
    skipped = {name: policy.skip_rule(r) for name, r in asked.items()}
    assert skipped == {name: "repeat_click" if name == "repeat" else None for name in asked}
    assert str(policy.select(asked["repeat"], root)) == "(and (term vertical:people) (or (term text:alpha1)))"
    assert policy.select(asked["another searcher"], root) is root


@pytest.mark.parametrize(
    ("band", "skipping"),
    [
        (LengthBand(3, None, "skip"), {"a b c", "a b c d"}),  # long queries: term matching only
        (LengthBand(3, None, "keep"), {"", "a", "a b"}),  # long queries keep the nn part, short ones skip
        (LengthBand(None, 3, "skip"), {"", "a", "a b"}),  # at most 3 characters
        (LengthBand(2, 4, "skip"), {"a b"}),  # both bounds
        (LengthBand(None, None, "skip"), {"", "a", "a b", "a b c", "a b c d"}),
    ],
)
def test_length_rule(band: LengthBand, skipping: set[str]) -> None:
    policy = QueryPolicy(length=band)
    texts = ["", "a", "a b", "a b c", "a b c d"]
    assert {t for t in texts if policy.skip_rule(SearchRequest(query_text=t)) == "length"} == skipping


def test_rules_combine_skip_if_any_and_only_keeps_the_named_ones() -> None:
    policy = QueryPolicy(repeat=frozenset({pair_hash(1, "x")}), length=LengthBand(2, None, "skip"))
    assert policy.rules == ["repeat_click", "length"]
    assert policy.skip_rule(SearchRequest(query_text="x", searcher_id=1)) == "repeat_click"
    assert policy.skip_rule(SearchRequest(query_text="x y", searcher_id=2)) == "length"
    assert policy.skip_rule(SearchRequest(query_text="x", searcher_id=2)) is None
    assert policy.only(["length"]).rules == ["length"]
    with pytest.raises(ValueError, match="unknown query selection rule 'lenght'"):
        policy.only(["lenght"])


def test_a_root_without_nn_is_left_as_it_is() -> None:
    policy = QueryPolicy(length=LengthBand(None, None, "skip"))  # skips every request
    root = parse("(and (term vertical:people) (term text:x))")
    assert policy.select(SearchRequest(query_text="x"), root) is root


@pytest.mark.parametrize(
    ("expr", "term_part"),
    [
        ("(or (nn u :radius 0.3 :nprobe 2) (nn v :k 3 :nprobe 2))", str(NOTHING)),
        (
            "(and (term v:p) (or (and (term t:a) (term t:b)) (nn u :radius 0.3 :nprobe 2)))",
            "(and (term v:p) (or (and (term t:a) (term t:b))))",
        ),
        ("(and (term v:p) (not (nn u :radius 0.3 :nprobe 2)) (term t:a))", "(and (term v:p) (term t:a))"),
        ("(or (and (term v:p) (nn u :k 3 :nprobe 2)) (term t:a))", "(or (term t:a))"),
        ("(and (term v:p) (or))", str(NOTHING)),
    ],
)
def test_without_nn(expr: str, term_part: str) -> None:
    assert str(without_nn(parse(expr))) == term_part


# ----- the classifier


def test_features_equal_a_hand_computation() -> None:
    features = QueryFeatures(("events", "people"), 99, {hash64("john"): 9, hash64("smith"): 0})
    got = features.vector(SearchRequest(vertical="people", query_text=" John Smithe ", searcher_id=3))
    scale = math.log(100)
    # tokens, chars, searcher, known share (smithe is not a term), min and mean log df, one-hot vertical
    expected = [2, 11, 1, 0.5, 0.0, (math.log(10) / scale + 0.0) / 2, 0, 1]
    assert got == pytest.approx(expected)
    assert features.names == ("tokens", "chars", "searcher", "known", "min_df", "mean_df", "vertical=events",
                              "vertical=people")  # fmt: skip
    assert features.vector(SearchRequest(query_text=None)) == [0.0] * 8


def test_replay_labels_find_what_only_the_nn_part_finds(candidate: Path, ebr_home: Path) -> None:
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        asked = [request(1), request(2, misspelled=True), request(3)]
        targets = [np.array([DOC_IDS[1]]), np.array([DOC_IDS[2]]), np.array([DOC_IDS[4]])]
        with_nn, term_only = replay_labels(service, asked, targets, N_DOCS, block=2)
    finally:
        service.close()
    # 1: both find it; 2: misspelled, the nn part alone; 3: the click (doc 4) is not what the text matches
    assert with_nn.tolist() == [True, True, True] and term_only.tolist() == [True, False, False]


def test_classifier_learns_separable_labels_and_the_stage_round_trips(
    candidate: Path, ebr_home: Path
) -> None:
    cfg = config(repeat_click=True, classifier=True)
    cfg.classifier.threshold = 0.5
    asked = [request(i, misspelled=i % 3 == 0, searcher=i) for i in range(120)]
    targets = [np.array([DOC_IDS[i]]) for i in range(120)]
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        summary = train_policy(cfg, service, asked, targets, ["people"], 0, candidate.parent / "stage")
    finally:
        service.close()
    c = summary["classifier"]
    assert summary["rules"] == ["repeat_click", "classifier"] and summary["repeat_click"]["pairs"] == 120
    assert c["positives"] == 40 and c["nn_helps"] == pytest.approx(1 / 3) and c["auc"] == 1.0
    assert c["accuracy"] == 1.0 and c["held_out"] == 30

    add_stage(candidate, "query_policy", candidate.parent / "stage", summary)
    manifest = registry.verify_version(candidate)
    assert manifest["stages"]["query_policy"]["rules"] == ["repeat_click", "classifier"]
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        policy = service.stages["query_policy"]
        fresh = [
            request(200),
            request(201, misspelled=True),
            request(5, searcher=5),
            request(202, searcher=5),
        ]
        assert [policy.skip_rule(r) for r in fresh] == ["classifier", None, "repeat_click", "classifier"]
        on = service.search_many([replace(r, limit=5) for r in fresh])
        off = service.search_many([replace(r, limit=5, stages={"query_policy": False}) for r in fresh])
    finally:
        service.close()
    assert [r.nn_skipped for r in on] == [True, False, True, True] and not any(r.nn_skipped for r in off)
    assert all("(nn" not in r.expr for r in on if r.nn_skipped) and all("(nn" in r.expr for r in off)
    assert on[0].hits.doc_ids.tolist() == [DOC_IDS[200]]  # term matching alone finds the exact query
    assert DOC_IDS[201] in on[1].hits.doc_ids  # the misspelled one kept its nn part

    (candidate / "stages" / "query_policy" / "pairs.npy").write_bytes(b"tampered")
    with pytest.raises(registry.CorruptVersionError, match="pairs.npy: checksum mismatch"):
        registry.verify_version(candidate)


def test_one_class_of_labels_trains_no_classifier(candidate: Path, ebr_home: Path, tmp_path: Path) -> None:
    asked = [request(i) for i in range(20)]  # term matching finds every click: the nn part never helps
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        cfg = config(classifier=True, length=True)
        summary = train_policy(
            cfg, service, asked, [np.array([d]) for d in DOC_IDS[:20]], ["people"], 0, tmp_path
        )
    finally:
        service.close()
    assert summary["rules"] == ["length"] and summary["classifier"]["trained"] is False
    policy = load_policy(tmp_path, summary)
    assert policy.rules == ["length"] and policy.length == LengthBand(3, None, "skip")


def test_bad_policy_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text(json.dumps({"format": 9, "rules": {}}))
    with pytest.raises(ValueError, match=r"policy.json: query policy format 9"):
        load_policy(tmp_path, {})
    (tmp_path / "policy.json").write_text(json.dumps({"format": 1, "rules": {"sometimes": {}}}))
    with pytest.raises(ValueError, match="policy.json: unknown rule 'sometimes'"):
        load_policy(tmp_path, {})
    with pytest.raises(ValueError, match="query_selection.length.matched must be skip or keep"):
        cfg = config(length=True)
        cfg.length.matched = "drop"
        train_policy(cfg, None, [], [], ["people"], 0, tmp_path)  # type: ignore[arg-type]


def test_the_gate_reports_skips_and_recall_with_the_policy_off(candidate: Path, ebr_home: Path) -> None:
    repeat = {pair_hash(1, "alhpa1"), pair_hash(2, "alhpa2")}  # two misspelled repeats: nn needed
    (candidate.parent / "stage").mkdir()
    np.save(candidate.parent / "stage" / "pairs.npy", np.array(sorted(repeat), dtype=np.int64))
    policy = {"format": 1, "rules": {"repeat_click": {"file": "pairs.npy"}}}
    (candidate.parent / "stage" / "policy.json").write_text(json.dumps(policy))
    add_stage(candidate, "query_policy", candidate.parent / "stage", {"rules": ["repeat_click"]})
    asked = [request(i, misspelled=True, searcher=i) for i in range(1, 5)]
    sessions = {"people": Sessions(asked, [np.array([DOC_IDS[i]]) for i in range(1, 5)])}
    gate = GateConfig.from_mapping({"tolerance": 0.02, "k": 5, "floor": 0.2}, ["people"])
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        skipped: dict[str, float] = {}
        on = served_recall(service, sessions, gate, skipped=skipped)
        off = served_recall(service, sessions, gate, stages={"query_policy": False})
    finally:
        service.close()
    # the two repeats lose their nn part, and with it the misspelled documents they look for
    assert skipped == {"people": 0.5} and on == {"people": 0.5} and off == {"people": 1.0}
    result = evaluate_gate(on, None, gate, sessions={"people": 4})
    result.query_policy = {
        "people": {
            "nn_skipped": 0.5,
            "recall": 0.5,
            "recall_policy_off": 1.0,
            "ndcg": 0.4,
            "ndcg_policy_off": 0.7,
        }
    }
    assert "| people | 50.0% | 0.5000 | 1.0000 | 0.4000 | 0.7000 |" in result.markdown()
    assert result.to_dict()["query_policy"]["people"]["recall_policy_off"] == 1.0


def test_a_resumed_step_stages_its_policy_on_a_new_candidate(candidate: Path, tmp_path: Path) -> None:
    step = tmp_path / "query_policy"
    (step / "stage").mkdir(parents=True)
    (step / "stage" / "policy.json").write_text(json.dumps({"format": 1, "rules": {}}))
    summary = {"format": 1, "rules": [], "resumed": True}
    stage = step / "stage"
    keep_stage(candidate, "query_policy", stage, summary)  # the candidate was staged anew: it gets the policy
    manifest = registry.verify_version(candidate)
    assert manifest["stages"]["query_policy"] == {"format": 1, "rules": []}
    keep_stage(candidate, "query_policy", stage, summary | {"rules": ["length"]})  # staged already: kept
    assert registry.verify_version(candidate)["stages"]["query_policy"]["rules"] == []
    keep_stage(tmp_path / "published-since", "query_policy", stage, summary)  # no candidate: nothing to do
