"""IR metrics as BEIR computes them (BEIR scores a run with pytrec_eval, which wraps trec_eval 9).

- **nDCG@k** is trec_eval's `ndcg_cut_k`: linear gains (the relevance grade; a grade <= 0 gains nothing),
  discount 1 / log2(rank + 1), normalised by the ideal DCG@k of the query's qrels (its grades, best first).
- **Recall@k** is trec_eval's `recall_k`: relevant documents in the top k / relevant documents of the query,
  relevant meaning grade > 0 (trec_eval's default relevance level 1; grades are integers). 0 without any.
- **MRR@k**: 1 / rank of the first relevant document within the top k, else 0 (trec_eval's `recip_rank`
  with a cutoff; BEIR computes it in Python, breaking ties by dict order, see docs/beir.md).

Conventions, as pytrec_eval 0.5 (trec_eval's `form_res_rels.c`) applies them:

- **Order.** A run (query -> doc -> score) is ranked by score descending where the scores are compared as C
  floats (float32: trec_eval keeps `float sim`, so 1.0 and 1.0 + 1e-12 tie), and ties are broken by doc id
  in *descending* string order (`strcmp(b, a)`: "b" before "a", "9" before "10"). Non-string ids are
  compared as `str(id)`, what pytrec_eval would do with them converted. A ranked list is taken as given.
- **Documents** absent from a query's qrels are non-relevant (grade 0).
- **Queries.** A query is evaluated when it has qrels (at least one judged document, relevant or not):
  one whose judgements are all grade 0 scores 0 everywhere. Queries in the run without qrels are ignored.
  A query with qrels that the results lack (or list with no documents) scores 0 with `missing="zero"` (the
  default, trec_eval's `-c`: a retriever gains nothing by returning nothing). pytrec_eval evaluates only
  queries present in both, an empty result list included, and BEIR averages over those: `missing="skip"`.

Means are plain means over the evaluated queries (BEIR rounds them to 5 decimals; these do not round).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Literal, TypeVar

import numpy as np

Q = TypeVar("Q", bound=Hashable)
D = TypeVar("D", bound=Hashable)
Qrels = Mapping[Q, Mapping[D, int]]
Run = Mapping[Q, Mapping[D, float]]
Rankings = Mapping[Q, Sequence[D]]
Missing = Literal["zero", "skip"]


def rank(scores: Mapping[D, float]) -> list[D]:
    """The documents best first as trec_eval orders them: float32 score descending, then id descending."""
    docs = list(scores)
    ids = np.array([str(d) for d in docs])
    with np.errstate(over="ignore"):  # beyond float32's range a score is +-inf, as in C
        sims = np.array([scores[d] for d in docs], dtype=np.float64).astype(np.float32)
    return [docs[i] for i in np.lexsort((ids, sims))[::-1]]


def _grades(ranked: Sequence[D], judged: Mapping[D, int], k: int) -> np.ndarray:
    return np.array([judged.get(d, 0) for d in ranked[:k]], dtype=np.float64)


def _dcg(gains: np.ndarray) -> float:
    return float(np.sum(np.maximum(gains, 0.0) / np.log2(np.arange(2, len(gains) + 2))))


def ndcg_at_k(ranked: Sequence[D], judged: Mapping[D, int], k: int) -> float:
    """nDCG@k of one ranked list (trec_eval `ndcg_cut_k`); 0 when the query has no relevant document."""
    ideal = _dcg(np.sort(np.array(list(judged.values()), dtype=np.float64))[::-1][:k])
    return _dcg(_grades(ranked, judged, k)) / ideal if ideal > 0 else 0.0


def recall_at_k(ranked: Sequence[D], judged: Mapping[D, int], k: int) -> float:
    """Relevant documents in the top k / relevant documents (trec_eval `recall_k`); 0 without any."""
    relevant = sum(g > 0 for g in judged.values())
    return float(np.sum(_grades(ranked, judged, k) > 0)) / relevant if relevant else 0.0


def mrr_at_k(ranked: Sequence[D], judged: Mapping[D, int], k: int) -> float:
    """1 / rank of the first relevant document in the top k, 0 if none is there."""
    hits = np.flatnonzero(_grades(ranked, judged, k) > 0)
    return 1.0 / float(hits[0] + 1) if len(hits) else 0.0


METRICS: dict[str, Callable[[Sequence, Mapping, int], float]] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "mrr": mrr_at_k,
}


def rankings(
    qrels: Qrels[Q, D], results: Run[Q, D] | Rankings[Q, D], missing: Missing = "zero"
) -> dict[Q, list[D]]:
    """Each evaluated query's documents best first (see the module docstring for which queries).

    `results` maps a query either to doc -> score (a run, ranked by `rank`) or to doc ids best first.
    """
    if missing not in ("zero", "skip"):
        raise ValueError(f"missing must be 'zero' or 'skip', got {missing!r}")
    out = {}
    for query, judged in qrels.items():
        if not judged or (missing == "skip" and query not in results):
            continue
        found = results.get(query, ())
        ranked = rank(found) if isinstance(found, Mapping) else list(found)
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"query {query!r}: a document is ranked twice")
        out[query] = ranked
    return out


def per_query(
    qrels: Qrels[Q, D],
    results: Run[Q, D] | Rankings[Q, D],
    ks: Sequence[int] = (10,),
    missing: Missing = "zero",
) -> dict[Q, dict[str, float]]:
    """Per evaluated query, every metric at every k: {query: {"ndcg@10": ..., "recall@10": ..., ...}}."""
    if any(k < 1 for k in ks):
        raise ValueError(f"cutoffs must be >= 1, got {list(ks)}")
    return {
        query: {f"{name}@{k}": f(ranked, qrels[query], k) for name, f in METRICS.items() for k in ks}
        for query, ranked in rankings(qrels, results, missing).items()
    }


def evaluate(
    qrels: Qrels[Q, D],
    results: Run[Q, D] | Rankings[Q, D],
    ks: Sequence[int] = (10,),
    missing: Missing = "zero",
) -> dict[str, float]:
    """Every metric at every k averaged over the evaluated queries (0.0 when there are none)."""
    scores = per_query(qrels, results, ks, missing)
    names = [f"{name}@{k}" for name in METRICS for k in ks]
    return {n: float(np.mean([s[n] for s in scores.values()])) if scores else 0.0 for n in names}
