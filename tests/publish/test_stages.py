"""Stages around the engine (ebr/retrieval/stages.py): staged into a candidate with `add_stage`, covered by
the manifest's checksums, loaded by the fixed loader table, run by `search_many` in order, turned off by
config or per request; and `without_nn`, the term part of an expression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from publish_pieces import DATASET, make_pieces, make_world, sessions

from ebr import registry
from ebr.registry import publication
from ebr.retrieval import stages
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.executor import Hits
from ebr.retrieval.query import NOTHING, Node, parse, without_nn
from ebr.retrieval.service import SearchError, SearchRequest, SearchService


@pytest.mark.parametrize(
    ("expr", "term_part"),
    [
        ("(and (term a:x) (or (term b:y) (nn u :k 5 :nprobe 2)))", "(and (term a:x) (or (term b:y)))"),
        ("(and (term a:x) (nn u :k 5 :nprobe 2))", str(NOTHING)),
        ("(nn u :radius 0.3 :nprobe 2)", str(NOTHING)),
        ("(rerank u :n 9 (and (term a:x) (not (nn u :k 5 :nprobe 2))))", "(and (term a:x))"),
        ("(fuse :bm25 1.0 (or (term b:y) (nn u :k 5 :nprobe 2)))", "(fuse :bm25 1.0 (or (term b:y)))"),
        ("(fuse :bm25 1.0 (nn u :k 5 :nprobe 2))", str(NOTHING)),
        ("(and (term a:x) (not (term b:y)))", "(and (term a:x) (not (term b:y)))"),
    ],
)
def test_without_nn_keeps_the_term_part(expr: str, term_part: str) -> None:
    assert str(without_nn(parse(expr))) == term_part


class SkipWhenAsked:
    """A query policy: term matching only for requests whose query text is `skip`."""

    def select(self, request: SearchRequest, root: Node) -> Node:
        return without_nn(root) if request.query_text == "skip" else root


class Reverse:
    """A ranker: the candidates' order reversed, scores the negated ranks."""

    candidates = 20

    def __init__(self, folder: Path) -> None:
        self.calls = int((folder / "calls.txt").read_text())  # a stage reads its own folder

    def apply(self, service: SearchService, batch: Sequence[stages.Retrieved]) -> list[Hits]:
        out = []
        for retrieved in batch:
            # the query embedding reaches the stage, unless the policy dropped the nn part
            assert set(retrieved.vectors) == ({"unified"} if "(nn" in str(retrieved.root) else set())
            order = np.arange(len(retrieved.hits.doc_ids))[::-1]
            hits = stages.take(retrieved.hits, order)
            out.append(Hits(hits.doc_ids, -np.arange(len(order), dtype=np.float64), hits.total))
        return out


def load_policy(folder: Path, summary: Mapping[str, Any]) -> SkipWhenAsked:
    assert summary == {"rule": "skip"}
    return SkipWhenAsked()


def load_ranker(folder: Path, summary: Mapping[str, Any]) -> Reverse:
    return Reverse(folder)


@pytest.fixture
def candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(
        stages,
        "LOADERS",
        stages.LOADERS | {"query_policy": f"{__name__}:load_policy", "ranker": f"{__name__}:load_ranker"},
    )
    staged = tmp_path / "candidate"
    publication.stage_version(make_pieces(make_world(), tmp_path), staged, {}, {}, "run-1", {})
    for name, summary in (("query_policy", {"rule": "skip"}), ("ranker", {"kind": "reverse"})):
        source = tmp_path / name
        source.mkdir()
        (source / "calls.txt").write_text("0")
        publication.add_stage(staged, name, source, summary)
    return staged


def test_stages_are_checksummed_run_in_order_and_can_be_turned_off(candidate: Path, ebr_home: Path) -> None:
    manifest = registry.verify_version(candidate)  # every stage file is listed
    assert set(manifest["stages"]) == {"query_policy", "ranker"}
    assert "stages/ranker/calls.txt" in manifest["files"]
    request = sessions(make_world())["people"].requests[0]
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=DATASET)
    try:
        plain, ranked, skipped = service.search_many(
            [
                replace(request, limit=5, stages={"ranker": False}),
                replace(request, limit=5),
                replace(request, limit=5, query_text="skip"),
            ]
        )
        wide = service.search(replace(request, limit=20, stages={"ranker": False}))
        with pytest.raises(SearchError, match="unknown stage 'rankr'"):
            service.search(replace(request, stages={"rankr": True}))
    finally:
        service.close()
    assert plain.stages == ["query_policy"] and ranked.stages == ["query_policy", "ranker"]
    assert len(plain.hits.doc_ids) == 5 and not plain.nn_skipped
    # the ranker saw its 20 candidates and the limit applied after it: the 5 last of them, reversed
    assert ranked.hits.doc_ids.tolist() == wide.hits.doc_ids[::-1][:5].tolist()
    assert skipped.nn_skipped and skipped.expr.count("(nn") == 0 and len(skipped.hits.doc_ids) == 0
    assert plain.to_dict()["stages"] == ["query_policy"] and skipped.to_dict()["nn_skipped"] is True


def test_a_changed_stage_file_fails_verification(candidate: Path) -> None:
    (candidate / "stages" / "ranker" / "calls.txt").write_text("1")
    with pytest.raises(registry.CorruptVersionError, match="calls.txt: checksum mismatch"):
        registry.verify_version(candidate)


def test_stages_off_in_config_and_unknown_stages(candidate: Path, ebr_home: Path) -> None:
    config = load_engine_config(["engine.stages.ranker=false", "engine.stages.query_policy=false"])
    service = SearchService.open(candidate, config, writable=False, dataset=DATASET)
    try:
        request = replace(sessions(make_world())["people"].requests[0], query_text="skip", limit=5)
        response = service.search(request)
        assert response.stages == [] and not response.nn_skipped and len(response.hits.doc_ids) == 5
        assert service.search(replace(request, stages={"query_policy": True})).nn_skipped
    finally:
        service.close()
    manifest = registry.verify_version(candidate)
    with pytest.raises(ValueError, match="unknown stage 'reranker'"):
        stages.load_stages(candidate, manifest | {"stages": {"reranker": {}}})


def test_a_published_version_takes_no_stage(candidate: Path, tmp_path: Path) -> None:
    manifest = registry.verify_version(candidate)
    published = {k: v for k, v in manifest.items() if k != "files"} | {"version": "v9"}
    registry.write_manifest(candidate, published)
    with pytest.raises(ValueError, match="version v9 is published"):
        publication.add_stage(candidate, "ranker", tmp_path / "ranker", {})
