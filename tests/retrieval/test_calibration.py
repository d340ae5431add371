"""Template calibration against exact ground truth: the chosen nprobe is the cheapest that reaches the target
share of the exact top-K recall, the radius the smallest that keeps that recall, through the engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
from engine_fixtures import D, make_corpus, unit, write_version

from ebr.config import retrain_defaults
from ebr.retrieval.calibration import Sessions, calibrate, recall, served_ids, target_radii
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.retrievers import expression, single
from ebr.retrieval.service import SearchRequest, SearchService

K = 10


@pytest.fixture
def synthetic(tmp_path: Path, ebr_home: Path):
    """A version over 600 clustered documents (IVF16 with 8-bit scalar codes: fine enough that quantised
    recall can reach the exact one); 150 people queries, each a noisy copy of one people document (its
    target); the exact top-K recall of the same embeddings is the reference."""
    corpus = make_corpus(seed=5, n=600)
    corpus.embeddings = {"unified": corpus.embeddings["unified"]}
    index = faiss.index_factory(D, "IVF16,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(corpus.embeddings["unified"])
    version = write_version(tmp_path / "v0001", corpus, {"unified": index})
    rng = np.random.default_rng(9)
    people = np.flatnonzero([t[0] == "vertical:people" for t in corpus.terms])
    targets = rng.choice(people, size=150, replace=False)
    docs = corpus.embeddings["unified"]
    queries = unit(docs[targets] + 0.35 * rng.standard_normal(docs[targets].shape).astype(np.float32))
    exact = np.argsort(-(queries @ docs[people].T), axis=1)[:, :K]
    reference = float(np.mean([t in people[row] for t, row in zip(targets, exact, strict=True)]))
    distances = 1.0 - np.einsum("ij,ij->i", queries, docs[targets])
    sessions = Sessions(
        [SearchRequest(vertical="people", vector={"unified": q.tolist()}) for q in queries],
        [np.array([corpus.doc_ids[t]]) for t in targets],
    )
    texts = [" ".join(t.removeprefix("text:") for t in corpus.terms[i][2:]) for i in targets]  # its words
    service = SearchService.open(version, load_engine_config(), writable=False, dataset="test")
    yield service, sessions, reference, distances, texts
    service.close()


def test_calibrated_template_meets_its_target_at_the_cheapest_nprobe(synthetic) -> None:
    service, sessions, reference, distances, _ = synthetic
    cfg = replace(
        retrain_defaults().serving, target=0.95, max_scanned=1.0, nprobes=[1, 2, 4, 8, 16], fusions=[]
    )
    template = calibrate(
        service, single("unified"), "people", sessions, reference, target_radii(distances), K, cfg
    )
    assert template.met and template.nn_recall >= 0.95 * reference and 0.5 < reference < 1.0
    assert template.recall >= template.nn_recall  # the served hybrid: at least its nn alone
    assert template.expr == (
        f"(and (term vertical:people) (or $text (nn unified :radius {template.radius!r} "
        f":nprobe {template.nprobe})))"
    )
    nn_alone = [p for p in template.tried if not p["terms"]]
    widest = {p["nprobe"]: p["recall"] for p in nn_alone if p["radius"] == 2.0}
    cheaper = [p for p in widest if p < template.nprobe]
    assert all(widest[p] < 0.95 * reference for p in cheaper)  # every cheaper nprobe missed the target
    assert template.radius < 2.0 and template.nn_recall >= widest[template.nprobe] - cfg.radius_slack
    shares = [p["scanned"] for p in sorted(template.tried, key=lambda p: p["nprobe"])]
    assert shares == sorted(shares) and 0 < template.scanned <= 1.0


def test_without_a_feasible_nprobe_the_most_accurate_affordable_point_is_kept(synthetic) -> None:
    service, sessions, reference, distances, _ = synthetic
    cfg = replace(
        retrain_defaults().serving, target=1.0, max_scanned=0.3, nprobes=[1, 2, 4, 8, 16], fusions=[]
    )
    template = calibrate(
        service, single("unified"), "people", sessions, 1.01, target_radii(distances), K, cfg
    )
    assert not template.met and template.scanned <= 0.3
    assert template.nn_recall == max(p["recall"] for p in template.tried if not p["terms"])


def test_candidate_radii_are_quantiles_of_the_target_distances() -> None:
    radii = target_radii(np.linspace(0.1, 0.5, 101))
    assert radii == sorted(radii) and radii[-1] == 0.5 and radii[0] == pytest.approx(0.3)
    assert target_radii(np.array([np.nan])) == []


def test_term_matches_cannot_hide_a_starved_nn(synthetic) -> None:
    """Queries whose text matches their target's terms: the hybrid finds the targets at any nprobe (clicks
    on a term-matching incumbent's results look like this), yet nprobe and radius are chosen so that the nn
    alone reaches the target share of the exact top-K recall."""
    service, sessions, reference, distances, texts = synthetic
    requests = [replace(r, query_text=t) for r, t in zip(sessions.requests, texts, strict=True)]
    texted = Sessions(requests, sessions.targets)
    cfg = replace(
        retrain_defaults().serving, target=0.95, max_scanned=1.0, nprobes=[1, 2, 4, 8, 16], fusions=[]
    )
    hybrid_at_1 = expression(single("unified"), "people", 1, radius=2.0)
    nn_at_1 = expression(single("unified"), "people", 1, radius=2.0, terms=False)
    found = {e: served_ids(service, texted.requests, e, K) for e in (hybrid_at_1, nn_at_1)}
    assert recall(found[hybrid_at_1], texted.targets, K) >= 0.95 * reference  # the terms alone would pass
    assert recall(found[nn_at_1], texted.targets, K) < 0.95 * reference  # ... the nn at nprobe 1 does not
    template = calibrate(
        service, single("unified"), "people", texted, reference, target_radii(distances), K, cfg
    )
    assert template.nprobe > 1 and template.nn_recall >= 0.95 * reference
    assert "$text" in template.expr and template.recall >= template.nn_recall
