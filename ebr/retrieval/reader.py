"""The read side of the index: documents, postings and payloads over a snapshot and its realtime changes.

Documents get dense internal ids. A snapshot (the `engine/` folder of a version, or a compacted state) holds
every live document in compressed-sparse-row arrays (ebr/retrieval/segment.py): postings (term -> sorted
internal ids) and the forward index (document -> term ids). Realtime changes (ebr/retrieval/index.py) never
edit those arrays: a new document version gets a fresh internal id (ids only grow, so appended postings stay
sorted), its terms go to per-term delta postings, and the old version is marked dead and removed from the
faiss lists. Posting lists may therefore contain dead ids; the executor drops them from final results
(and/or/not commute with that filter, nn scans never see them).

Payloads live in one float32 array aligned with the postings (NaN: this posting has none), which exists only
when some term has one: an index without payloads stores and costs exactly what it did before they existed.
A loaded snapshot's arrays may be read-only memory maps of its files (`EngineIndex.load(mmap=True)`), shared
by every process that serves it: nothing here writes into them (appends copy an array first).
The index keeps each document's text length (the sum of its `text:` terms' frequencies), computed from the
postings when it is built or loaded, for BM25 (ebr/retrieval/scoring.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ebr.retrieval.documents import frequencies
from ebr.retrieval.quantized import NNField
from ebr.retrieval.segment import Growable, text_lengths_from_postings
from ebr.retrieval.terms import CLUSTER_FIELD_PREFIX


class IndexReader:
    """Term postings, forward index, documents and nn fields: every look-up, none of the changes."""

    def __init__(
        self,
        doc_ids: np.ndarray,
        terms: list[str],
        postings_offsets: np.ndarray,
        postings: np.ndarray,
        payloads: np.ndarray | None,
        forward_offsets: np.ndarray,
        forward: np.ndarray,
        fields: dict[str, NNField],
    ):
        self.terms = list(terms)
        self.term_ids = {t: i for i, t in enumerate(self.terms)}
        self.fields = fields
        self._base_count = len(doc_ids)
        self._postings_offsets = postings_offsets
        self._postings = postings
        self._payloads = payloads  # float32 aligned with postings (NaN: none), or None: no payload at all
        self._forward_offsets = forward_offsets
        self._forward = forward
        self._doc_ids = Growable(np.int64, doc_ids)
        self._live = Growable(np.bool_, np.ones(len(doc_ids), dtype=bool))
        lengths = text_lengths_from_postings(self.terms, postings_offsets, postings, payloads, len(doc_ids))
        self._text_lengths = Growable(np.float64, lengths)
        self._mean_text_length: float | None = None
        if len(doc_ids) and np.all(doc_ids[1:] > doc_ids[:-1]):  # ids in order (built ones): no copy
            self._base_sorted_doc_ids, self._base_sorted_internal = doc_ids, None
        else:
            order = np.argsort(doc_ids, kind="stable")
            self._base_sorted_doc_ids = doc_ids[order]
            self._base_sorted_internal = order.astype(np.int64)
        if self._base_sorted_internal is not None and np.any(np.diff(self._base_sorted_doc_ids) == 0):
            dup = self._base_sorted_doc_ids[np.flatnonzero(np.diff(self._base_sorted_doc_ids) == 0)[0]]
            raise ValueError(f"doc_id {int(dup)} appears twice")
        self._delta: dict[int, Growable] = {}
        self._delta_payloads: dict[int, Growable] = {}  # aligned with _delta[tid], once a payload arrives
        self._delta_forward: dict[int, np.ndarray] = {}
        self._overlay: dict[int, int] = {}  # doc id -> current internal id, -1 when deleted
        self._dead = 0
        self._universe: np.ndarray | None = None

    # ----- documents
    @property
    def internal_count(self) -> int:
        return len(self._doc_ids)

    @property
    def live_count(self) -> int:
        return len(self._doc_ids) - self._dead

    @property
    def dead_count(self) -> int:
        return self._dead

    @property
    def doc_ids(self) -> np.ndarray:
        """Internal id -> doc id (dead versions included)."""
        return self._doc_ids.view()

    @property
    def live_mask(self) -> np.ndarray:
        return self._live.view()

    def internal_id(self, doc_id: int) -> int | None:
        """The internal id of the live version of `doc_id`, or None."""
        if doc_id in self._overlay:
            internal = self._overlay[doc_id]
            return None if internal < 0 else internal
        pos = int(np.searchsorted(self._base_sorted_doc_ids, doc_id))
        if pos < len(self._base_sorted_doc_ids) and self._base_sorted_doc_ids[pos] == doc_id:
            return pos if self._base_sorted_internal is None else int(self._base_sorted_internal[pos])
        return None

    def universe(self) -> np.ndarray:
        """Sorted internal ids of every live document."""
        if self._universe is None:
            self._universe = np.flatnonzero(self._live.view()).astype(np.int64)
        return self._universe

    @property
    def text_lengths(self) -> np.ndarray:
        """Internal id -> the sum of the frequencies of the document's `text:` terms (float64)."""
        return self._text_lengths.view()

    @property
    def mean_text_length(self) -> float:
        """The mean text length of the live documents (0 when there is none), cached until a change."""
        if self._mean_text_length is None:
            live = self.universe()
            self._mean_text_length = float(self.text_lengths[live].mean()) if len(live) else 0.0
        return self._mean_text_length

    def document_terms(self, internal: int) -> list[str]:
        if internal in self._delta_forward:
            tids = self._delta_forward[internal]
        else:
            tids = self._forward[self._forward_offsets[internal] : self._forward_offsets[internal + 1]]
        return [self.terms[t] for t in tids]

    def document_payloads(self, internal: int) -> dict[str, float]:
        """The payloads of a document's terms (only the terms that carry one)."""
        if self._payloads is None and not self._delta_payloads:
            return {}
        if internal in self._delta_forward:
            tids = self._delta_forward[internal]
        else:
            tids = self._forward[self._forward_offsets[internal] : self._forward_offsets[internal + 1]]
        out = {}
        for tid in tids.tolist():
            value = self._payload_at(tid, internal)
            if not math.isnan(value):
                out[self.terms[tid]] = value
        return out

    def _payload_at(self, tid: int, internal: int) -> float:
        """The payload of term `tid` in document `internal`, which holds it (NaN: none)."""
        if internal < self._base_count:  # base documents are in the base postings only, new ones in deltas
            if self._payloads is None:
                return math.nan
            lo, hi = self._base_range(tid)
            return float(self._payloads[lo + int(np.searchsorted(self._postings[lo:hi], internal))])
        payloads = self._delta_payloads.get(tid)
        if payloads is None:
            return math.nan
        return float(payloads.view()[int(np.searchsorted(self._delta[tid].view(), internal))])

    def document_keys(self, internal: int) -> list[str]:
        return sorted(k for k, f in self.fields.items() if f.contains(internal))

    # ----- postings
    @property
    def has_payloads(self) -> bool:
        """Whether some posting carries a payload (dead versions included)."""
        return self._payloads is not None or bool(self._delta_payloads)

    def _base_range(self, tid: int) -> tuple[int, int]:
        """The slice of the base postings of term id `tid` (empty for terms new since the snapshot)."""
        if tid < len(self._postings_offsets) - 1:
            return int(self._postings_offsets[tid]), int(self._postings_offsets[tid + 1])
        return 0, 0

    def posting(self, term: str) -> np.ndarray:
        """Sorted internal ids holding `term` (may include dead versions). Cluster terms read faiss lists."""
        tid = self.term_ids.get(term)
        if tid is None:
            return self._cluster_posting(term)
        lo, hi = self._base_range(tid)
        delta = self._delta.get(tid)
        base = self._postings[lo:hi]
        return base if delta is None else np.concatenate([base, delta.view()])

    def posting_payloads(self, term: str) -> np.ndarray:
        """float32 payloads aligned with `posting(term)`, NaN where none (cluster terms: all)."""
        tid = self.term_ids.get(term)
        if tid is None:
            return np.full(self.posting_size(term), np.nan, dtype=np.float32)
        lo, hi = self._base_range(tid)
        base = self._payloads[lo:hi] if self._payloads is not None else np.full(hi - lo, np.nan, np.float32)
        delta = self._delta.get(tid)
        if delta is None:
            return base
        payloads = self._delta_payloads.get(tid)
        extra = payloads.view() if payloads is not None else np.full(len(delta), np.nan, dtype=np.float32)
        return np.concatenate([base, extra])

    def term_payloads(self, term: str, ids: np.ndarray) -> np.ndarray:
        """float32 payload of `term` in each of the documents `ids` (NaN: not held, or held without one)."""
        out = np.full(len(ids), np.nan, dtype=np.float32)
        if not self.has_payloads or term not in self.term_ids:
            return out
        held, pos = self._held(term, ids)
        out[held] = self.posting_payloads(term)[pos[held]]
        return out

    def term_frequencies(self, term: str, ids: np.ndarray) -> np.ndarray:
        """float64 frequency of the `text:` term `term` in each of the documents `ids` (0: not held)."""
        out = np.zeros(len(ids))
        held, pos = self._held(term, ids)
        out[held] = frequencies(self.posting_payloads(term)[pos[held]])
        return out

    def _held(self, term: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of `ids` hold `term`, and their positions in `posting(term)`."""
        posting = self.posting(term)
        if len(posting) == 0:
            return np.zeros(len(ids), dtype=bool), np.zeros(len(ids), dtype=np.int64)
        pos = np.minimum(np.searchsorted(posting, ids), len(posting) - 1)
        return posting[pos] == ids, pos

    def live_document_frequency(self, term: str) -> int:
        """How many live documents hold `term`."""
        posting = self.posting(term)
        return int(np.count_nonzero(self.live_mask[posting])) if self._dead else len(posting)

    def posting_size(self, term: str) -> int:
        tid = self.term_ids.get(term)
        if tid is None:
            return len(self._cluster_posting(term))
        lo, hi = self._base_range(tid)
        delta = self._delta.get(tid)
        return hi - lo + (0 if delta is None else len(delta))

    def _cluster_posting(self, term: str) -> np.ndarray:
        fieldname, _, value = term.partition(":")
        nn_field = cluster_field(self.fields, fieldname)
        if nn_field is not None and value.isdigit():
            list_no = int(value)
            if list_no < nn_field.nlist:
                return nn_field.cluster_postings(list_no)
        return np.empty(0, dtype=np.int64)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by each part of the index (numpy arrays and faiss codes; Python dicts excluded)."""
        arrays = {
            "postings": self._postings.nbytes
            + self._postings_offsets.nbytes
            + (0 if self._payloads is None else self._payloads.nbytes),
            "forward": self._forward.nbytes + self._forward_offsets.nbytes,
            "documents": self.doc_ids.nbytes
            + self.live_mask.nbytes
            + self.text_lengths.nbytes
            + (0 if self._base_sorted_internal is None else 2 * self._base_sorted_internal.nbytes),
        }
        arrays.update({f"nn.{key}": f.memory_bytes() for key, f in self.fields.items()})
        return arrays


def cluster_field(fields: Mapping[str, NNField], fieldname: str) -> NNField | None:
    """The nn field a cluster-term field `nn.<key>` names (terms are case-folded, keys may not be)."""
    if not fieldname.startswith(CLUSTER_FIELD_PREFIX):
        return None
    key = fieldname[len(CLUSTER_FIELD_PREFIX) :]
    return next((f for k, f in fields.items() if k.casefold() == key), None)
