"""The array pieces of an index snapshot: compressed-sparse-row postings and forward index built from
(document, term id, payload) triples, text lengths read from the postings, and the append-only array that
realtime changes grow in.
"""

from __future__ import annotations

import bisect

import numpy as np

from ebr.retrieval.documents import frequencies
from ebr.retrieval.terms import TEXT_PREFIX

_TEXT_END = TEXT_PREFIX[:-1] + ";"  # sorts right after every `text:` term (';' follows ':')


class Growable:
    """An append-only numpy array (amortised doubling). The initial array is used as it is (it may be a
    read-only memory map, shared with other processes) until the first append copies it."""

    def __init__(self, dtype: np.dtype | type, initial: np.ndarray | None = None):
        self._buf = np.empty(16, dtype=dtype) if initial is None else np.asarray(initial, dtype=dtype)
        self._n = 0 if initial is None else len(self._buf)

    def append(self, value: object) -> None:
        if self._n == len(self._buf):
            bigger = np.empty(max(16, 2 * len(self._buf)), dtype=self._buf.dtype)
            bigger[: self._n] = self._buf[: self._n]
            self._buf = bigger
        self._buf[self._n] = value
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def view(self) -> np.ndarray:
        return self._buf[: self._n]


def csr_pair(
    docs: np.ndarray, tids: np.ndarray, n_docs: int, n_terms: int, payloads: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Postings (term-major, with their payloads if any) and forward (doc-major) CSR arrays from
    (doc, term id, payload) triples."""
    by_term = np.lexsort((docs, tids))
    postings_offsets = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(np.bincount(tids, minlength=n_terms), out=postings_offsets[1:])
    by_doc = np.lexsort((tids, docs))
    forward_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, minlength=n_docs), out=forward_offsets[1:])
    return (
        postings_offsets,
        docs[by_term].astype(np.int64),
        None if payloads is None else payloads[by_term].astype(np.float32),
        forward_offsets,
        tids[by_doc].astype(np.int32),
    )


def text_lengths_from_postings(
    terms: list[str], postings_offsets: np.ndarray, postings: np.ndarray, payloads: np.ndarray | None, n: int
) -> np.ndarray:
    """Per document, the sum of the frequencies of its `text:` terms, from the postings of the sorted
    `terms` (the `text:` terms are one range of them)."""
    lo, hi = (int(postings_offsets[bisect.bisect_left(terms, t)]) for t in (TEXT_PREFIX, _TEXT_END))
    if lo == hi:  # no text: untouched zero pages, no memory until a document gets a text term
        return np.zeros(n)
    weights = np.ones(hi - lo) if payloads is None else frequencies(payloads[lo:hi])
    return np.bincount(postings[lo:hi], weights=weights, minlength=n)
