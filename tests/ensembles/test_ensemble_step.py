"""The ensemble step: retrievers from config, weights on a validation split, before/after quantisation."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from ebr.ann.knn import exact_knn, recall_at_k
from ebr.ann.quantize import build_index, set_nprobe
from ebr.config import load_config
from ebr.evaluation.ensembles import (
    evaluation_markdown,
    evaluation_table,
    fill_weights,
    search_rows,
    specs_from_config,
)
from ebr.models.ensembles import l2_normalize
from ebr.retrieval.query import parse
from ebr.retrieval.retrievers import RetrieverSpec, bm25_expression, expression, index_docs, single


@pytest.fixture(scope="module")
def views():
    """Two 'models' seeing complementary halves of a latent space; queries are noisy copies of targets."""
    rng = np.random.default_rng(5)
    latent = rng.standard_normal((800, 24)).astype(np.float32)
    target = rng.choice(800, size=150, replace=False)
    q_latent = latent[target] + 0.8 * rng.standard_normal((150, 24)).astype(np.float32)
    docs = {"text": l2_normalize(latent[:, :12]), "unified": l2_normalize(latent[:, 12:])}
    queries = {"text": l2_normalize(q_latent[:, :12]), "unified": l2_normalize(q_latent[:, 12:])}
    return queries, docs, [np.array([t]) for t in target]


CFG = {
    "models": ["text", "unified"],
    "weighted_concat": [{"name": "text+unified", "keys": ["text", "unified"], "weights": None}],
    "cascades": [
        {"name": "text>unified", "first": "text", "second": "unified", "n": 50},
        {"name": "easy>hard", "first": "unified", "second": "unified_hnm", "n": 50},
    ],
}


def test_specs_from_config_skips_retrievers_without_models():
    specs, skipped = specs_from_config(CFG, available=["text", "unified"])
    assert [s.name for s in specs] == ["text", "unified", "text+unified", "text>unified"]
    assert skipped == [{"name": "easy>hard", "reason": "no embeddings for model(s) ['unified_hnm']"}]
    assert specs[3].index_key == "text" and specs[2].index_key == "text+unified"


def test_ensemble_config_composes():
    cfg = OmegaConf.to_container(load_config().ensemble)
    specs, _ = specs_from_config(cfg, available=["text", "unified", "unified_hnm"])
    assert {s.kind for s in specs} == {"single", "ensemble", "cascade"}


def test_evaluation_table_before_and_after_quantisation(views):
    queries, docs, targets = views
    specs, _ = specs_from_config(CFG, available=list(docs))
    specs, tables = fill_weights(specs, queries, docs, targets, k=10, grid=[0.5, 1.0, 2.0])
    ensemble = next(s for s in specs if s.kind == "ensemble")
    assert ensemble.weights[0] == 1.0 and tables["text+unified"]["recall"] > 0
    indexes = {}
    for spec in specs:
        if spec.index_key not in indexes:
            index = build_index("IVF16,PQ6x4", index_docs(spec, docs), "inner_product")
            set_nprobe(index, 4)
            indexes[spec.index_key] = index
    rows = evaluation_table(specs, queries, docs, targets, k=10, indexes=indexes)
    by_name = {r["name"]: r for r in rows}
    # a single model's exact recall is plain exact KNN recall
    assert by_name["text"]["recall_exact"] == pytest.approx(
        recall_at_k(exact_knn(queries["text"], docs["text"], 10)[1], targets, 10)
    )
    # complementary views: the ensemble beats both single models before quantisation
    assert by_name["text+unified"]["recall_exact"] > max(
        by_name["text"]["recall_exact"], by_name["unified"]["recall_exact"]
    )
    assert all(r["recall_quantised"] is not None for r in rows)
    md = evaluation_markdown(rows)
    assert "| text+unified w=[1.0," in md and "| text>unified n=50 | cascade |" in md


def test_search_rows_is_exact_knn_without_an_index(views):
    queries, docs, _ = views
    rows = exact_knn(queries["text"], docs["text"], 3)[1]
    np.testing.assert_array_equal(search_rows(single("text"), queries, docs, 3), rows)


def test_every_retriever_kind_is_an_engine_expression():
    ensemble = RetrieverSpec(
        name="text+unified", kind="ensemble", keys=("text", "unified"), weights=(1.0, 2.0)
    )
    cascade = RetrieverSpec(name="text>unified", kind="cascade", keys=("text", "unified"), n=200)
    assert expression(single("text"), "People", 16, radius=0.3) == (
        "(and (term vertical:people) (or $text (nn text :radius 0.3 :nprobe 16)))"
    )
    assert expression(ensemble, "groups", 8, k=50) == (
        "(and (term vertical:groups) (or $text (nn text+unified :k 50 :nprobe 8)))"
    )
    assert expression(cascade, "people", 4, radius=2.0, fusion=":bm25 0.3") == (
        "(rerank unified :n 200 (fuse :bm25 0.3 (and (term vertical:people) (or $anytext "
        "(nn text :radius 2.0 :nprobe 4)))))"
    )
    for expr in (expression(cascade, "people", 4, radius=0.5), bm25_expression("job ads")):
        assert str(parse(expr)) == expr  # the engine parses what it is given to serve
    assert bm25_expression("job ads") == "(fuse :bm25 1.0 (and (term vertical:job_ads) $anytext))"
    with pytest.raises(ValueError, match="give a radius or a k"):
        expression(single("text"), "people", 4)


def test_spec_validation():
    with pytest.raises(ValueError, match="a cascade takes 2 model keys"):
        RetrieverSpec(name="c", kind="cascade", keys=("a",), n=5)
    with pytest.raises(ValueError, match="needs n >= 1"):
        RetrieverSpec(name="c", kind="cascade", keys=("a", "b"))
    with pytest.raises(ValueError, match="must match"):
        single("../etc")
    spec = RetrieverSpec(name="a+b", kind="ensemble", keys=("a", "b"), weights=(1.0, 0.5))
    assert RetrieverSpec.from_dict(spec.to_dict()) == spec
