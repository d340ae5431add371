"""ANN tuning against the share of documents scanned, on synthetic clustered vectors with exact KNN."""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from ebr.ann.knn import exact_knn, one_recall_at, recall_at_k
from ebr.ann.quantize import (
    build_index,
    expand_schemes,
    pareto_front,
    search_scanned,
    table3_markdown,
    tune,
)
from ebr.config import IndexConfig, load_config, retrain_defaults, typed
from ebr.datasets.synthetic import clustered_dataset
from ebr.runners import Shards


def index_cfg(**settings) -> IndexConfig:
    """conf/index/default.yaml with some settings changed."""
    return replace(retrain_defaults().index, **settings)


def _transform(index: faiss.IndexPreTransform, x: np.ndarray) -> np.ndarray:
    return faiss.downcast_VectorTransform(index.chain.at(0)).apply(x)


@pytest.fixture(scope="module")
def data():
    return clustered_dataset(n_docs=6000, n_queries=300, d=16, n_clusters=60, seed=3)


@pytest.fixture(scope="module")
def small_cfg() -> IndexConfig:
    """Every kind of scheme; 8-byte codes for 16-d vectors (d/4 loses too much on this synthetic set)."""
    return index_cfg(
        factories=(
            "IVF{nlist},PQ{m}x{nbits}",
            "OPQ{m},IVF{nlist},PQ{m}x{nbits}",
            "PCAR{pca_d},IVF{nlist},PQ{m}x{nbits}",
            "IMI2x{imi_bits},PQ{m}x{nbits}",
        ),
        nlists=(32, 128),
        imi_bits=(4,),
        nprobes=(1, 2, 4, 8, 16, 32, 64, 128),
        pq_bytes=8,
        pca_dim=8,
        k=10,
        max_drop=0.03,
        tuning_queries=300,
    )


@pytest.fixture(scope="module")
def tuned(data, small_cfg):
    return tune(data.docs, data.queries, small_cfg, data.targets)


@pytest.mark.parametrize("factory", ["IVF32,PQ4x6", "OPQ4,IVF32,PQ4x6"])
def test_scanned_share_is_the_size_of_the_probed_inverted_lists(data, factory):
    index = build_index(factory, data.docs, "inner_product")
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert sizes.min() < sizes.mean() / 2  # unbalanced lists: nprobe alone does not say the cost
    queries = data.queries[:50]
    in_ivf_space = _transform(index, queries) if isinstance(index, faiss.IndexPreTransform) else queries
    for nprobe in (1, 3, 8):
        _, probed = ivf.quantizer.search(in_ivf_space, nprobe)
        _, _, scanned = search_scanned(index, queries, 10, nprobe)
        assert scanned == pytest.approx(sizes[probed].sum() / (len(queries) * index.ntotal))


def test_tuner_chosen_point_meets_its_target_against_exact_ground_truth(data, small_cfg, tuned):
    assert tuned.met and tuned.chosen is not None and tuned.chosen.servable
    # measure the chosen index again, independently of the tuner, against blocked exact KNN
    _, exact_rows = exact_knn(data.queries, data.docs, 10, block_size=1000)
    assert tuned.exact["recall"] == pytest.approx(recall_at_k(exact_rows, data.targets, 10))
    _, rows = tuned.chosen_index().search(data.queries, 10)
    recall = recall_at_k(rows, data.targets, 10)
    assert recall == pytest.approx(tuned.chosen.recall)
    assert (
        recall >= tuned.target["threshold"] == pytest.approx(tuned.exact["recall"] * (1 - small_cfg.max_drop))
    )
    assert tuned.chosen.one_recall == pytest.approx(one_recall_at(rows, exact_rows[:, 0], 10))
    # the cheapest servable point meeting the target, and on the Pareto front
    meeting = [p for p in tuned.points if p.servable and p.recall >= tuned.target["threshold"]]
    assert tuned.chosen.scanned == min(p.scanned for p in meeting)
    assert tuned.chosen.scanned < 0.5  # far cheaper than scanning everything
    assert tuned.chosen.pareto


def test_pareto_front_is_not_dominated(tuned):
    def dominates(q, p):
        return (q.scanned, q.code_size, -q.recall) != (p.scanned, p.code_size, -p.recall) and (
            q.scanned <= p.scanned and q.code_size <= p.code_size and q.recall >= p.recall
        )

    front = [p for p in tuned.points if p.pareto]
    assert front and {id(p) for p in front} == {id(p) for p in pareto_front(tuned.points, "recall")}
    for p in tuned.points:
        assert p.pareto == (not any(dominates(q, p) for q in tuned.points))


def test_imi_is_measured_but_not_servable_by_the_inner_product_engine(tuned):
    imi = [p for p in tuned.points if "IMI" in p.factory]
    assert imi and all(p.metric == "l2" and not p.servable and not p.chosen for p in imi)
    assert {p.metric for p in tuned.points if "IMI" not in p.factory} == {"inner_product"}


def test_unreachable_target_chooses_the_most_accurate_point(data):
    cfg = index_cfg(
        factories=("IVF{nlist},PQ{m}x{nbits}",), nlists=(32,), nprobes=(1, 2), pq_nbits=4, k=10, max_drop=0.0
    )
    result = tune(data.docs, data.queries, cfg, data.targets)
    assert not result.met
    assert result.chosen.recall == max(p.recall for p in result.points)
    assert "target NOT met" in table3_markdown(result)


def test_without_targets_the_target_is_one_recall(data):
    cfg = index_cfg(
        factories=("IVF{nlist},PQ{m}x{nbits}",), nlists=(32,), nprobes=(1, 4, 32), pq_bytes=8, max_drop=0.1
    )
    result = tune(data.docs, data.queries[:100], cfg)
    assert result.target["metric"] == "one_recall" and result.target["threshold"] == pytest.approx(0.9)
    assert result.met and result.chosen.one_recall >= 0.9 and result.chosen.recall is None


def test_expand_schemes_fills_templates_and_skips_impossible_ones():
    cfg = index_cfg(
        factories=(
            "IVF{nlist},PQ{m}x{nbits}",
            "PCAR{pca_d},IVF{nlist},PQ{m}x{nbits}",
            "IMI2x{imi_bits},PQ{m}x{nbits}",
        ),
        nlists=(16, "auto"),
        imi_bits=(4, 10),
        pca_dim=20,
    )
    schemes, skipped = expand_schemes(cfg, d=32, n_train=1000)
    factories = [s.factory for s in schemes]
    assert "IVF16,PQ8x8" in factories and "IVF128,PQ8x8" in factories  # pq_bytes = d/4, auto = 4 sqrt(1000)
    assert "IMI2x4,PQ8x8" in factories
    reasons = {s["factory"]: s["reason"] for s in skipped}
    assert "does not divide" in reasons["PCAR20,IVF16,PQ8x8"]
    assert "centroids" in reasons["IMI2x10,PQ8x8"]


def test_pca_with_inner_product_is_an_uncentred_projection(data):
    index = build_index("PCAR8,IVF16,PQ4x4", data.docs, "inner_product")
    pca = faiss.downcast_VectorTransform(index.chain.at(0))
    assert not faiss.vector_to_array(pca.b).any()
    np.testing.assert_allclose(
        _transform(index, data.docs[:5]),
        data.docs[:5] @ faiss.vector_to_array(pca.A).reshape(8, 16).T,
        rtol=1e-4,
        atol=1e-5,
    )


def test_table3_and_report_dict(tuned):
    md = table3_markdown(tuned)
    assert "| scheme | nprobe | 1-recall@10 | recall@10 | % scanned | bytes/doc |" in md
    assert "| Flat (exact) |" in md and "P*" in md
    d = tuned.to_dict()
    assert d["chosen"]["chosen"] and len(d["points"]) == len(tuned.points) and d["met"]


def test_index_config_is_typed_from_conf_index_default():
    cfg = typed(load_config().index)
    assert isinstance(cfg, IndexConfig) and cfg.pq_bytes is None and cfg.metric == "inner_product"
    assert "IVF{nlist},PQ{m}x{nbits}" in cfg.factories
    with pytest.raises(ConfigCompositionException, match="index.nprobe"):
        load_config(["index.nprobe=[1]"])  # an unknown key is refused when the config is composed
    with pytest.raises(ConfigCompositionException, match="index.k=1.5"):
        load_config(["index.k=1.5"])  # so is a value of the wrong type


def test_tuning_reports_progress_per_scheme_and_logs_each(data, caplog):
    """Shards.report gets (what, fraction) once before and once after each scheme: increasing, ending at 1."""
    cfg = index_cfg(
        factories=("IVF{nlist},PQ{m}x{nbits}", "IVF{nlist},Flat"), nlists=(16, 32), nprobes=(1, 4), pq_bytes=8
    )
    calls = []
    with caplog.at_level("INFO", logger="ebr.ann.quantize"):
        tune(
            data.docs,
            data.queries[:50],
            cfg,
            shards=Shards(progress=lambda w, f: calls.append((w, f))),
            what="ann x",
        )
    assert [f for _, f in calls] == [0.0, 0.25, 0.5, 0.75, 1.0] and {w for w, _ in calls} == {"ann x"}
    lines = [r.getMessage() for r in caplog.records if r.name == "ebr.ann.quantize"]
    assert len(lines) == 4 and all(line.startswith("ann x: IVF") for line in lines)
    assert "built and measured in" in lines[0] and "% scanned" in lines[0]
