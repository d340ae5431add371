"""The ranking features (ebr/ranking/features.py) equal a brute-force reference computed with plain loops
from the tiny world's raw tables, for every variant; missing values are NaN; the context round-trips."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ranking_pieces import DATASET, D, TinyWorld, requests, text

from ebr.ranking.features import VARIANTS, RankingContext, candidate_features, feature_names
from ebr.ranking.ranker import retrieve
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def reference_rows(world: TinyWorld, retrieved, k1: float, b: float) -> list[list[float]]:
    """Every term and context feature of every hit, one plain loop per hit and per feature."""
    docs = {int(r.doc_id): r for r in world.documents.itertuples()}
    texts = {d: words(r.title) for d, r in docs.items()}
    n = len(docs)
    avgdl = sum(len(t) for t in texts.values()) / n
    friends = {(a, c) for a, c in world.friendships} | {(c, a) for a, c in world.friendships}
    members = set(world.memberships)
    rows = []
    for r in retrieved:
        query = list(dict.fromkeys(words(r.request.query_text or "")))
        searcher = r.request.searcher_id
        known_searcher = searcher in world.users
        my_friends = [f for f in world.users if (searcher, f) in friends]
        for rank, (doc_id, score) in enumerate(
            zip(r.hits.doc_ids.tolist(), r.hits.scores.tolist(), strict=True)
        ):
            doc = docs[doc_id]
            tokens = texts[doc_id]
            bm25 = 0.0
            for t in query:
                tf = tokens.count(t)
                if tf:
                    df = sum(t in other for other in texts.values())
                    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                    bm25 += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(tokens) / avgdl))
            share = sum(t in tokens for t in query) / len(query) if query else 0.0
            row = [bm25, share, float(tokens == words(r.request.query_text or "")), score, float(rank)]
            for level in ("city", "region", "country"):
                asked, have = r.request.context.get(level), text(getattr(doc, level))
                row.append(float("nan") if asked is None or have is None else float(asked == have))
            pop = doc.popularity
            row.append(float("nan") if pop is None or pop != pop else math.log1p(pop))
            user = None if doc.user_id != doc.user_id or doc.user_id is None else int(doc.user_id)
            if not known_searcher:
                row += [float("nan")] * 4
            else:
                row.append(float(user is not None and (searcher, user) in friends))
                row.append(float(user == searcher))
                row.append(float((searcher, doc_id) in members))
                linked = sum((f, doc_id) in members for f in my_friends)
                linked += sum(user is not None and (f, user) in friends for f in my_friends)
                row.append(float(linked))
            rows.append(row)
    return rows


@pytest.fixture
def service(staged: Path, ebr_home: Path):
    opened = SearchService.open(staged, load_engine_config(), writable=False, dataset=DATASET)
    yield opened
    opened.close()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_feature_equals_the_brute_force_reference(
    variant: str, world: TinyWorld, service: SearchService, context: RankingContext
) -> None:
    asked, _ = requests(world, 12, seed=5)
    asked[0] = replace(asked[0], searcher_id=None)  # no searcher: the social features are missing
    asked[1] = replace(asked[1], context={"city": None, "region": "IDF", "country": None})
    asked[2] = replace(asked[2], query_text="smith smith club")
    batch = retrieve(service, asked, candidates=20)
    found = candidate_features(service, batch, variant, context)
    assert found.names == feature_names(variant, D)
    assert found.groups.tolist() == [len(r.hits.doc_ids) for r in batch] and found.matrix.dtype == np.float32
    bm25 = service.config.bm25
    expected = np.array(reference_rows(world, batch, bm25.k1, bm25.b))
    fixed = expected.shape[1]
    np.testing.assert_allclose(found.matrix[:, :fixed], expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    row = 0
    rows_of = {int(d): i for i, d in enumerate(world.documents["doc_id"])}
    for r, request in zip(batch, asked, strict=True):
        q = np.asarray(request.vector, dtype=np.float32)
        for doc_id in r.hits.doc_ids.tolist():
            e = world.embeddings[rows_of[doc_id]]
            want = {
                "none": [],
                "cosine": [float(sum(a * c for a, c in zip(q, e, strict=True)))],
                "hadamard": [a * c for a, c in zip(q, e, strict=True)],
                "raw": [*q, *e],
            }[variant]
            np.testing.assert_allclose(found.matrix[row, fixed:], want, rtol=1e-5, atol=1e-6)
            row += 1
    assert row == len(found.matrix)


def test_missing_values_are_nan(world: TinyWorld, service: SearchService, context: RankingContext) -> None:
    asked, _ = requests(world, 3, seed=6)
    batch = retrieve(service, asked, candidates=5)
    names = feature_names("cosine", D)
    without_context = candidate_features(service, batch, "cosine", None)
    context_columns = [names.index(c) for c in ("same_city", "is_member", "friends_linked")]
    assert np.isnan(without_context.matrix[:, context_columns]).all()
    no_vector = [replace(r, vectors={}) for r in batch]  # the query policy dropped the (nn) part
    dropped = candidate_features(service, no_vector, "cosine", context)
    assert np.isnan(dropped.matrix[:, names.index("emb_cosine")]).all()
    assert not np.isnan(dropped.matrix[:, names.index("bm25")]).any()
    empty = candidate_features(service, [], "raw", context)
    assert empty.matrix.shape == (0, len(feature_names("raw", D))) and empty.groups.tolist() == []
    with pytest.raises(ValueError, match="ranking variant must be one of none, cosine, hadamard, raw"):
        candidate_features(service, batch, "cosin", context)


def test_a_document_added_since_the_version_has_nan_features(
    world: TinyWorld, staged: Path, ebr_home: Path, context: RankingContext
) -> None:
    service = SearchService.open(staged, load_engine_config(), writable=True, dataset=DATASET)
    try:
        vector = world.embeddings[0].tolist()
        service.engine.add(999, ["vertical:people", "text:alice", "text:smith"], {"unified": vector})
        asked, _ = requests(world, 1, seed=7)
        request = replace(asked[0], vertical="people", query_text="alice smith", vector=vector)
        batch = retrieve(service, [request], candidates=40)
        found = candidate_features(service, batch, "cosine", context)
    finally:
        service.close()
    names = found.names
    row = batch[0].hits.doc_ids.tolist().index(999)
    for name in ("title_exact", "same_city", "log_popularity", "is_member", "emb_cosine"):
        assert np.isnan(found.matrix[row, names.index(name)]), name
    assert found.matrix[row, names.index("bm25")] > 0 and found.matrix[row, names.index("matched_share")] == 1


def test_the_context_round_trips_and_a_bad_file_is_named(context: RankingContext, tmp_path: Path) -> None:
    path = context.save(tmp_path / "stage")
    loaded = RankingContext.load(tmp_path / "stage")
    for name in context.__dataclass_fields__:
        if name == "place_names":
            assert loaded.place_names == context.place_names
        else:
            want = getattr(context, name)
            assert np.array_equal(getattr(loaded, name), want, equal_nan=want.dtype.kind == "f"), name
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="context.npz: not a ranking context"):
        RankingContext.load(tmp_path / "stage")
