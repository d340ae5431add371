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
    coarse_centroids,
    code_type,
    expand_schemes,
    pareto_front,
    search_scanned,
    shares_coarse,
    table3_markdown,
    training_sample,
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


# ----- cheaper sweeps, same choice: a shared coarse quantiser, early-stopped nprobe sweeps


def _codes(index: faiss.Index) -> list[tuple[np.ndarray, np.ndarray]]:
    invlists = faiss.extract_index_ivf(index).invlists
    return [
        (
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy(),
            faiss.rev_swig_ptr(invlists.get_codes(i), invlists.list_size(i) * invlists.code_size).copy(),
        )
        for i in range(invlists.nlist)
    ]


@pytest.mark.parametrize("factory", ["IVF32,PQ4x8", "IVF32,Flat", "IVF32,SQ8"])
def test_a_shared_coarse_quantiser_gives_the_codes_of_a_separate_build(data, factory):
    """The shared centroids are the ones the scheme trains itself: same lists, same codes, bit for bit."""
    train = training_sample(data.docs, 100_000, 0)
    coarse = coarse_centroids(train, 32)
    separate = build_index(factory, data.docs, "inner_product")
    shared = build_index(factory, data.docs, "inner_product", coarse=coarse, train=train)
    np.testing.assert_array_equal(faiss.extract_index_ivf(separate).quantizer.reconstruct_n(0, 32), coarse)
    for (ids_a, codes_a), (ids_b, codes_b) in zip(_codes(separate), _codes(shared), strict=True):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(codes_a, codes_b)


def test_opq_takes_the_shared_quantiser_rotated_at_the_recall_of_its_own(data):
    """k-means commutes with the OPQ rotation: the rotated shared centroids are a valid coarse quantiser
    in the rotated space (not bit for bit the one OPQ trains there), at the same recall within noise."""
    train = training_sample(data.docs, 100_000, 0)
    coarse = coarse_centroids(train, 32)
    shared = build_index("OPQ4,IVF32,PQ4x8", data.docs, coarse=coarse, train=train)
    separate = build_index("OPQ4,IVF32,PQ4x8", data.docs)
    rotation = faiss.downcast_VectorTransform(shared.chain.at(0))
    np.testing.assert_allclose(
        faiss.extract_index_ivf(shared).quantizer.reconstruct_n(0, 32), rotation.apply(coarse), atol=1e-6
    )
    for nprobe in (2, 8):
        recalls = []
        for index in (shared, separate):
            _, rows, _ = search_scanned(index, data.queries, 10, nprobe)
            recalls.append(recall_at_k(rows, data.targets, 10))
        assert recalls[0] == pytest.approx(recalls[1], abs=0.03)


def test_schemes_that_cannot_share_a_coarse_quantiser_are_refused():
    assert shares_coarse(faiss.index_factory(16, "IVF8,PQ4", faiss.METRIC_INNER_PRODUCT))
    assert shares_coarse(faiss.index_factory(16, "OPQ4,IVF8,PQ4", faiss.METRIC_INNER_PRODUCT))
    assert shares_coarse(faiss.index_factory(16, "IVF8,PQ4x4fs", faiss.METRIC_INNER_PRODUCT))
    assert not shares_coarse(faiss.index_factory(16, "PCAR8,IVF8,PQ4", faiss.METRIC_INNER_PRODUCT))
    assert not shares_coarse(faiss.index_factory(16, "IMI2x3,PQ4", faiss.METRIC_L2))
    with pytest.raises(ValueError, match="PCAR8,IVF8,PQ4x8: its coarse quantiser cannot be shared"):
        build_index("PCAR8,IVF8,PQ4x8", np.eye(16, dtype=np.float32).repeat(40, 0), coarse=np.eye(8, 16))


def test_sharing_the_coarse_quantiser_keeps_the_chosen_point(data, small_cfg):
    cfg = replace(small_cfg, early_stop=False)
    shared = tune(data.docs, data.queries, cfg, data.targets)
    separate = tune(data.docs, data.queries, replace(cfg, share_coarse=False), data.targets)
    assert (shared.chosen.factory, shared.chosen.nprobe) == (separate.chosen.factory, separate.chosen.nprobe)
    same_space = [p for p in shared.points if p.factory.startswith("IVF")]  # bit-equal codes (test above)
    by_key = {(p.factory, p.nprobe): p for p in separate.points}
    assert same_space
    for p in same_space:
        q = by_key[p.factory, p.nprobe]
        assert (p.recall, p.one_recall, p.scanned, p.cost) == (q.recall, q.one_recall, q.scanned, q.cost)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_stopped_sweeps_keep_the_chosen_point_of_the_full_sweep(seed):
    data = clustered_dataset(n_docs=4000, n_queries=200, d=16, n_clusters=40, seed=seed)
    cfg = index_cfg(
        factories=("IVF{nlist},PQ{m}x{nbits}", "IVF{nlist},PQ4x8", "IVF{nlist},Flat"),
        nlists=(16, 64),
        nprobes=(1, 2, 4, 8, 16, 32, 64),
        pq_bytes=8,
        k=10,
        max_drop=0.03,
    )
    full = tune(data.docs, data.queries, replace(cfg, early_stop=False), data.targets)
    early = tune(data.docs, data.queries, cfg, data.targets)
    assert (early.chosen.factory, early.chosen.nprobe) == (full.chosen.factory, full.chosen.nprobe)
    assert early.met == full.met and early.chosen.recall == full.chosen.recall
    by_key = {(p.factory, p.nprobe): p for p in full.points}
    for p in early.points:  # a prefix of each scheme's sweep, the same measurements
        q = by_key[p.factory, p.nprobe]
        assert (p.recall, p.scanned, p.one_recall) == (q.recall, q.scanned, q.one_recall)
    assert early.stopped and len(early.points) < len(full.points) and not full.stopped
    for stop in early.stopped:
        measured = [p.nprobe for p in early.points if p.factory == stop["factory"]]
        assert max(measured) == stop["after_nprobe"] and stop["skipped"] and stop["reason"]
        assert all(n > stop["after_nprobe"] for n in stop["skipped"])


# ----- fast-scan codes: measured with the same scanned share, chosen only when servable


FAST_SCAN = ("IVF{nlist},PQ16x4fs", "IVF{nlist},RaBitQ", "IVF{nlist},RaBitQfs")  # 16-d: 1-d sub-vectors


@pytest.mark.parametrize("factory", ["IVF32,PQ8x4fs", "IVF32,RaBitQ", "IVF32,RaBitQfs"])
def test_scanned_share_of_fast_scan_codes_is_the_probed_lists(data, factory):
    index = build_index(factory, data.docs, "inner_product")
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    for nprobe in (1, 4):
        _, probed = ivf.quantizer.search(data.queries[:50], nprobe)
        _, _, scanned = search_scanned(index, data.queries[:50], 10, nprobe)
        assert scanned == pytest.approx(sizes[probed].sum() / (50 * index.ntotal))


def test_scanned_share_equals_faiss_ndis_for_flat_codes(data):
    index = build_index("IVF32,PQ4x8", data.docs, "inner_product")
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    _, _, scanned = search_scanned(index, data.queries[:50], 10, 4)
    assert scanned == pytest.approx(stats.ndis / (50 * index.ntotal))


def test_fast_scan_points_are_measured_and_servable_only_when_the_caller_serves_them(data):
    cfg = index_cfg(
        factories=("IVF{nlist},PQ{m}x{nbits}", *FAST_SCAN),
        nlists=(32,),
        nprobes=(1, 2, 4, 8, 16, 32),
        pq_bytes=8,
        k=10,
        max_drop=0.12,  # 4-bit codes lose ~6 points on this set
        scan_cost={**index_cfg().scan_cost, "IndexIVFPQFastScan": 0.01, "IndexIVFRaBitQFastScan": 0.01},
    )

    def flat_codes_only(index: faiss.Index) -> str | None:
        return "blocked codes" if "FastScan" in code_type(index) else None

    refused = tune(data.docs, data.queries, cfg, data.targets, unservable=flat_codes_only)
    assert {u["factory"]: u["reason"] for u in refused.unservable} == {
        "IVF32,PQ16x4fs": "blocked codes",
        "IVF32,RaBitQfs": "blocked codes",
    }
    assert "| IVF32,PQ16x4fs | not servable: blocked codes |" in table3_markdown(refused)
    kinds = {p.factory: p.code_type for p in refused.points}
    assert set(kinds.values()) == {
        "IndexIVFPQ",
        "IndexIVFPQFastScan",
        "IndexIVFRaBitQ",
        "IndexIVFRaBitQFastScan",
    }
    for p in refused.points:
        assert p.servable == ("FastScan" not in p.code_type)
        assert p.cost == pytest.approx(p.scanned * cfg.scan_cost[p.code_type])
    assert "FastScan" not in refused.chosen.code_type
    allowed = tune(data.docs, data.queries, cfg, data.targets)  # every inner-product point servable
    assert all(p.servable for p in allowed.points)
    assert "FastScan" in allowed.chosen.code_type  # nearly free to scan: the cheapest on target


def test_a_code_type_without_a_scan_cost_is_refused(data):
    cfg = index_cfg(factories=("IVF{nlist},PQ{m}x4fs",), nlists=(32,), nprobes=(1,), pq_bytes=8, scan_cost={})
    with pytest.raises(ValueError, match="index.scan_cost has no relative cost for IndexIVFPQFastScan"):
        tune(data.docs, data.queries[:20], cfg)
