"""Text scores and rank fusion: Lucene's BM25 over `text:` terms, and the two fusions of `(fuse ...)`.

BM25 of document d for the query text's distinct tokens t (N: live documents, df: live documents holding
`text:t`, tf: the frequency of `text:t` in d, dl: d's text length, avgdl: the mean over live documents):

    sum over t of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)),
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))

Fusions of BM25 with a result's other score (its nn cosine; NaN: none):
    linear (:bm25 W)  W * bm25 / max_bm25 + (1 - W) * cos, a missing cos counting 0 (and the BM25 part 0
                      when no result has a BM25 above 0);
    rrf (:rrf K)      sum over the rankings the result is in of 1 / (K + rank): the ranking by BM25 of the
                      results with a BM25 above 0, and the ranking by cos of those with one (1-based, ties
                      by doc id).
"""

from __future__ import annotations

import math

import numpy as np

from ebr.config import BM25Params
from ebr.retrieval.reader import IndexReader
from ebr.retrieval.terms import query_terms


def bm25_scores(
    index: IndexReader, ids: np.ndarray, query_text: str | None, params: BM25Params
) -> np.ndarray:
    """float64 BM25 of each of the internal ids `ids` for the query text (0: none of its tokens)."""
    out = np.zeros(len(ids))
    lengths = index.text_lengths[ids]
    k1, b = params.k1, params.b
    for term in query_terms(query_text):  # one vectorised pass per query token
        tf = index.term_frequencies(term, ids)
        held = tf > 0
        if not held.any():
            continue
        df = index.live_document_frequency(term)
        idf = math.log(1 + (index.live_count - df + 0.5) / (df + 0.5))
        tf = tf[held]
        norm = k1 * (1 - b + b * lengths[held] / index.mean_text_length)
        out[held] += idf * tf * (k1 + 1) / (tf + norm)
    return out


def fuse_linear(text: np.ndarray, cos: np.ndarray, weight: float) -> np.ndarray:
    """weight * text / max(text) + (1 - weight) * cos (a missing cos: 0; max(text) 0: no text part)."""
    best = float(text.max()) if len(text) else 0.0
    text_part = weight * text / best if best > 0 else np.zeros(len(text))
    return text_part + (1 - weight) * np.nan_to_num(cos.astype(np.float64), nan=0.0)


def fuse_rrf(doc_ids: np.ndarray, text: np.ndarray, cos: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank fusion of the ranking by `text` (those above 0) and by `cos` (those not NaN)."""
    out = np.zeros(len(doc_ids))
    for values, ranked in ((text, text > 0), (cos.astype(np.float64), ~np.isnan(cos))):
        members = np.flatnonzero(ranked)
        order = members[np.lexsort((doc_ids[members], -values[members]))]
        out[order] += 1.0 / (k + np.arange(1, len(order) + 1))
    return out
