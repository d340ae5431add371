"""The engine's index: term dictionary, posting lists, documents and the quantised embedding fields.

Documents get dense internal ids. A snapshot (the `engine/` folder of a version, or a compacted state) holds
every live document in compressed-sparse-row arrays: postings (term -> sorted internal ids) and the forward
index (document -> term ids). Realtime changes never edit those arrays: a new document version gets a fresh
internal id (ids only grow, so appended postings stay sorted), its terms go to per-term delta postings, and
the old version is marked dead and removed from the faiss lists. `compacted()` folds everything into a new
dense snapshot. Posting lists may therefore contain dead ids; the executor drops them from final results
(and/or/not commute with that filter, nn scans never see them).

A document's term may carry a payload, a float32 (a term weight, a static score, ...). Payloads live in one
array aligned with the postings (NaN: this posting has none), which exists only when some term has one: an
index without payloads stores and costs exactly what it did before they existed. The payload of a `text:`
term is its frequency in the document (1 without a payload; see `frequencies`); the index keeps each
document's text length (the sum of those frequencies), computed from the postings when it is built or
loaded, for BM25 (ebr/retrieval/scoring.py).

Folder format (written by `save`, read by `load`):
    meta.json                 format (1; 2 when postings_payloads.npy exists), counts, keys
    doc_ids.npy               int64, internal id -> doc id
    terms.json                sorted term strings (term id = position)
    postings_offsets.npy      int64, len(terms) + 1
    postings.npy              int64 internal ids, sorted within each term
    postings_payloads.npy     float32, aligned with postings.npy, NaN = no payload (format 2 only)
    forward_offsets.npy       int64, documents + 1
    forward.npy               int32 term ids of each document
    nn/<key>.faiss            the key's IVF index; ids are internal ids, direct map = hashtable
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ebr.retrieval.quantized import NNField
from ebr.retrieval.terms import TEXT_PREFIX, normalize_term

FORMATS = (1, 2)  # 1: no payloads; 2: with postings_payloads.npy
CLUSTER_FIELD_PREFIX = "nn."
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_TEXT_END = TEXT_PREFIX[:-1] + ";"  # sorts right after every `text:` term (';' follows ':')

# A document's terms: "field:value" strings and (term, payload) pairs, or a mapping term -> payload or None
TermsInput = Iterable[str | tuple[str, float | None]] | Mapping[str, float | None]


class UpdateError(ValueError):
    """An update that cannot be applied; `status` is the HTTP status that describes it."""

    status = 400


class DocumentExistsError(UpdateError):
    status = 409


class DocumentNotFoundError(UpdateError):
    status = 404


class _Growable:
    """An append-only numpy array (amortised doubling)."""

    def __init__(self, dtype: np.dtype | type, initial: np.ndarray | None = None):
        initial = np.empty(0, dtype=dtype) if initial is None else np.asarray(initial, dtype=dtype)
        self._buf = np.empty(max(16, 2 * len(initial)), dtype=dtype)
        self._buf[: len(initial)] = initial
        self._n = len(initial)

    def append(self, value: object) -> None:
        if self._n == len(self._buf):
            bigger = np.empty(2 * len(self._buf), dtype=self._buf.dtype)
            bigger[: self._n] = self._buf[: self._n]
            self._buf = bigger
        self._buf[self._n] = value
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def view(self) -> np.ndarray:
        return self._buf[: self._n]


@dataclass
class Document:
    """A validated document version: normalised terms, their payloads (float32 values, only the terms that
    carry one) and unit-length embeddings per key."""

    doc_id: int
    terms: list[str]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    payloads: dict[str, float] = field(default_factory=dict)


@dataclass
class Update:
    """A validated change of a document: terms (with their payloads) replaced when given, embeddings
    replaced per given key."""

    doc_id: int
    terms: list[str] | None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    payloads: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Delete:
    doc_id: int


Change = Document | Update | Delete


class EngineIndex:
    """Term postings, forward index, documents and nn fields, with in-place realtime changes."""

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
        self._doc_ids = _Growable(np.int64, doc_ids)
        self._live = _Growable(np.bool_, np.ones(len(doc_ids), dtype=bool))
        lengths = _text_lengths(self.terms, postings_offsets, postings, payloads, len(doc_ids))
        self._text_lengths = _Growable(np.float64, lengths)
        self._mean_text_length: float | None = None
        order = np.argsort(doc_ids, kind="stable")
        self._base_sorted_doc_ids = doc_ids[order]
        self._base_sorted_internal = order.astype(np.int64)
        if len(doc_ids) and np.any(np.diff(self._base_sorted_doc_ids) == 0):
            dup = self._base_sorted_doc_ids[np.flatnonzero(np.diff(self._base_sorted_doc_ids) == 0)[0]]
            raise ValueError(f"doc_id {int(dup)} appears twice")
        self._delta: dict[int, _Growable] = {}
        self._delta_payloads: dict[int, _Growable] = {}  # aligned with _delta[tid], once a payload arrives
        self._delta_forward: dict[int, np.ndarray] = {}
        self._overlay: dict[int, int] = {}  # doc id -> current internal id, -1 when deleted
        self._dead = 0
        self._universe: np.ndarray | None = None

    # ----- construction
    @classmethod
    def from_documents(
        cls, doc_ids: np.ndarray, doc_terms: Sequence[TermsInput], fields: dict[str, NNField]
    ) -> EngineIndex:
        """An index over documents in row order (internal id = row); terms (plain strings, (term, payload)
        pairs or a mapping term -> payload) are normalised here."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if len(doc_terms) != len(doc_ids):
            raise ValueError(f"{len(doc_ids)} doc ids but {len(doc_terms)} term lists")
        unique: dict[str, str] = {}
        pair_docs: list[int] = []
        pair_terms: list[str] = []
        pair_payloads: dict[int, float] = {}  # pair number -> payload, for the few pairs that have one
        for row, terms in enumerate(doc_terms):
            if isinstance(terms, Mapping) or not all(isinstance(t, str) for t in terms):
                try:
                    names, payloads = parse_terms(terms)
                except ValueError as exc:
                    raise ValueError(f"doc_id {int(doc_ids[row])}: {exc}") from exc
                for term in names:
                    if term in payloads:
                        pair_payloads[len(pair_terms)] = payloads[term]
                    pair_docs.append(row)
                    pair_terms.append(term)
                continue
            for raw in dict.fromkeys(terms):  # the common case, plain strings: normalised once per string
                if raw not in unique:
                    try:
                        unique[raw] = document_term(raw)
                    except ValueError as exc:
                        raise ValueError(f"doc_id {int(doc_ids[row])}: {exc}") from exc
                pair_docs.append(row)
                pair_terms.append(unique[raw])
        vocab = sorted(set(pair_terms))
        lookup = {t: i for i, t in enumerate(vocab)}
        docs = np.asarray(pair_docs, dtype=np.int64)
        tids = np.fromiter((lookup[t] for t in pair_terms), dtype=np.int64, count=len(pair_terms))
        payloads = None
        if pair_payloads:
            payloads = np.full(len(pair_terms), np.nan, dtype=np.float32)
            payloads[list(pair_payloads)] = list(pair_payloads.values())
        return cls(doc_ids, vocab, *_csr_pair(docs, tids, len(doc_ids), len(vocab), payloads), fields)

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
            return int(self._base_sorted_internal[pos])
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

    # ----- validation of changes
    def check_document(
        self, doc_id: int, terms: TermsInput, embeddings: Mapping[str, Sequence[float]], max_terms: int
    ) -> Document:
        """A validated Document (normalised terms, float32 payloads, unit vectors) or UpdateError naming
        the problem."""
        doc_id = check_doc_id(doc_id)
        try:
            names, payloads = parse_terms(terms)
        except ValueError as exc:
            raise UpdateError(f"doc_id {doc_id}: {exc}") from exc
        if len(names) > max_terms:
            raise UpdateError(f"doc_id {doc_id}: {len(names)} terms, more than the limit of {max_terms}")
        return Document(doc_id, names, self._check_embeddings(doc_id, embeddings), payloads)

    def check_add(self, doc: Document) -> None:
        if self.internal_id(doc.doc_id) is not None:
            raise DocumentExistsError(f"doc_id {doc.doc_id} already exists (use an update)")

    def _check_embeddings(
        self, doc_id: int, embeddings: Mapping[str, Sequence[float]]
    ) -> dict[str, np.ndarray]:
        out = {}
        for key, values in embeddings.items():
            if key not in self.fields:
                raise UpdateError(
                    f"doc_id {doc_id}: unknown embedding key {key!r} (known: {sorted(self.fields)})"
                )
            what = f"doc_id {doc_id}: embedding {key!r}"
            out[key] = unit_vector(values, self.fields[key].d, what, UpdateError)
        return out

    # ----- applying changes (already validated)
    def add(self, doc: Document) -> int:
        """Append a document version; returns its internal id."""
        self.apply([doc])
        return len(self._doc_ids) - 1

    def update(self, change: Update) -> int:
        self.apply([change])
        return len(self._doc_ids) - 1

    def delete(self, doc_id: int) -> None:
        self.apply([Delete(doc_id)])

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply changes in order; new embeddings are quantised together, one faiss call per key."""
        pending: dict[str, tuple[list[int], list[np.ndarray]]] = {}

        def flush() -> None:
            for key, (ids, vectors) in pending.items():
                self.fields[key].add(np.asarray(ids, dtype=np.int64), np.stack(vectors))
            pending.clear()

        for change in changes:
            if isinstance(change, Document):
                self.check_add(change)
                internal = self._append(change.doc_id, change.terms, change.payloads, {})
            elif isinstance(change, Update):
                flush()  # the old version's codes must be in the lists to be copied or removed
                old = self._live_internal(change.doc_id)
                if change.terms is not None:
                    terms, payloads = change.terms, change.payloads
                else:
                    terms, payloads = self.document_terms(old), self.document_payloads(old)
                kept = {
                    key: f.codes(np.array([old]))
                    for key, f in self.fields.items()
                    if key not in change.embeddings and f.contains(old)
                }
                self._kill(old)
                internal = self._append(change.doc_id, terms, payloads, kept)
            else:
                flush()
                self._kill(self._live_internal(change.doc_id))
                self._overlay[change.doc_id] = -1
                continue
            for key, vector in change.embeddings.items():
                ids, vectors = pending.setdefault(key, ([], []))
                ids.append(internal)
                vectors.append(vector)
        flush()

    def _live_internal(self, doc_id: int) -> int:
        internal = self.internal_id(doc_id)
        if internal is None:
            raise DocumentNotFoundError(f"doc_id {doc_id} does not exist")
        return internal

    def _append(
        self, doc_id: int, terms: list[str], payloads: Mapping[str, float], codes: Mapping[str, np.ndarray]
    ) -> int:
        internal = len(self._doc_ids)
        self._doc_ids.append(doc_id)
        self._live.append(True)
        text = [payloads.get(t, np.nan) for t in terms if t.startswith(TEXT_PREFIX)]
        self._text_lengths.append(frequencies(np.array(text, dtype=np.float32)).sum())
        tids = []
        for term in terms:
            tid = self.term_ids.get(term)
            if tid is None:
                tid = self.term_ids[term] = len(self.terms)
                self.terms.append(term)
            tids.append(tid)
            delta = self._delta.get(tid)
            if delta is None:
                delta = self._delta[tid] = _Growable(np.int64)
            delta_payloads = self._delta_payloads.get(tid)
            if delta_payloads is None and term in payloads:
                backfill = np.full(len(delta), np.nan, dtype=np.float32)
                delta_payloads = self._delta_payloads[tid] = _Growable(np.float32, backfill)
            delta.append(internal)
            if delta_payloads is not None:
                delta_payloads.append(payloads.get(term, np.nan))
        self._delta_forward[internal] = np.asarray(tids, dtype=np.int32)
        ids = np.array([internal], dtype=np.int64)
        for key, code in codes.items():
            self.fields[key].add_codes(ids, code)
        self._overlay[doc_id] = internal
        self._universe = self._mean_text_length = None
        return internal

    def _kill(self, internal: int) -> None:
        self._live.view()[internal] = False
        self._dead += 1
        ids = np.array([internal], dtype=np.int64)
        for f in self.fields.values():
            f.remove(ids)
        self._universe = self._mean_text_length = None

    # ----- compaction and files
    def compacted(self) -> EngineIndex:
        """A dense snapshot of the live documents (new internal ids in doc order of the old ones)."""
        live = self.universe()
        mapping = np.full(self.internal_count, -1, dtype=np.int64)
        mapping[live] = np.arange(len(live), dtype=np.int64)
        # every (document, term id, payload) of the base postings and the deltas, dead versions dropped
        base_terms = np.arange(len(self._postings_offsets) - 1, dtype=np.int64)
        docs = [self._postings]
        tids = [np.repeat(base_terms, np.diff(self._postings_offsets))]
        with_payloads = self.has_payloads
        payloads: list[np.ndarray] = []
        if with_payloads:
            base = self._payloads
            payloads.append(base if base is not None else np.full(len(self._postings), np.nan, np.float32))
        for tid, delta in self._delta.items():
            docs.append(delta.view())
            tids.append(np.full(len(delta), tid, dtype=np.int64))
            if with_payloads:
                delta_payloads = self._delta_payloads.get(tid)
                payloads.append(
                    delta_payloads.view()
                    if delta_payloads is not None
                    else np.full(len(delta), np.nan, dtype=np.float32)
                )
        doc_col = np.concatenate(docs)
        keep = self.live_mask[doc_col]
        doc_col, tid_col = mapping[doc_col[keep]], np.concatenate(tids)[keep]
        pay_col = np.concatenate(payloads)[keep] if with_payloads else None
        if pay_col is not None and np.isnan(pay_col).all():
            pay_col = None  # the documents with payloads are gone
        used = np.unique(tid_col)
        vocab_order = sorted(used.tolist(), key=lambda t: self.terms[t])
        remap = np.full(len(self.terms), -1, dtype=np.int64)
        remap[vocab_order] = np.arange(len(vocab_order), dtype=np.int64)
        vocab = [self.terms[t] for t in vocab_order]
        fields = {key: f.renumbered(mapping) for key, f in self.fields.items()}
        return EngineIndex(
            self.doc_ids[live],
            vocab,
            *_csr_pair(doc_col, remap[tid_col], len(live), len(vocab), pay_col),
            fields,
        )

    def save(self, folder: Path) -> None:
        """Write this index (compacted first when it holds changes) into an existing empty folder."""
        if self._delta_forward or self._dead:
            self.compacted().save(folder)
            return
        (folder / "nn").mkdir(parents=True, exist_ok=True)
        np.save(folder / "doc_ids.npy", self.doc_ids)
        (folder / "terms.json").write_text(json.dumps(self.terms))
        np.save(folder / "postings_offsets.npy", self._postings_offsets)
        np.save(folder / "postings.npy", self._postings)
        if self._payloads is not None:
            np.save(folder / "postings_payloads.npy", self._payloads)
        np.save(folder / "forward_offsets.npy", self._forward_offsets)
        np.save(folder / "forward.npy", self._forward)
        for key, f in self.fields.items():
            f.write(folder / "nn" / f"{key}.faiss")
        meta = {
            "format": 1 if self._payloads is None else 2,  # older engines read payload-free folders
            "documents": self.live_count,
            "terms": len(self.terms),
            "postings": len(self._postings),
            "keys": {key: {"d": f.d, "nlist": f.nlist, "ntotal": f.ntotal} for key, f in self.fields.items()},
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> EngineIndex:
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: not an engine index folder (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") not in FORMATS:
            raise ValueError(
                f"{meta_path}: format {meta.get('format')!r}, this engine reads formats {list(FORMATS)}"
            )
        fields = {key: NNField.read(key, folder / "nn" / f"{key}.faiss") for key in sorted(meta["keys"])}
        return cls(
            np.load(folder / "doc_ids.npy"),
            json.loads((folder / "terms.json").read_text()),
            np.load(folder / "postings_offsets.npy"),
            np.load(folder / "postings.npy"),
            np.load(folder / "postings_payloads.npy") if meta["format"] == 2 else None,
            np.load(folder / "forward_offsets.npy"),
            np.load(folder / "forward.npy"),
            fields,
        )

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
            + self._base_sorted_doc_ids.nbytes
            + self._base_sorted_internal.nbytes,
        }
        arrays.update({f"nn.{key}": f.memory_bytes() for key, f in self.fields.items()})
        return arrays


def _csr_pair(
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


def _text_lengths(
    terms: list[str], postings_offsets: np.ndarray, postings: np.ndarray, payloads: np.ndarray | None, n: int
) -> np.ndarray:
    """Per document, the sum of the frequencies of its `text:` terms, from the postings of the sorted
    `terms` (the `text:` terms are one range of them)."""
    lo, hi = (int(postings_offsets[bisect.bisect_left(terms, t)]) for t in (TEXT_PREFIX, _TEXT_END))
    weights = np.ones(hi - lo) if payloads is None else frequencies(payloads[lo:hi])
    return np.bincount(postings[lo:hi], weights=weights, minlength=n)


def frequencies(payloads: np.ndarray) -> np.ndarray:
    """float64 term frequencies of `text:` postings from their payloads: the payload (below 0: 0), 1 where
    there is none."""
    values = payloads.astype(np.float64)
    return np.where(np.isnan(values), 1.0, np.maximum(values, 0.0))


def cluster_field(fields: Mapping[str, NNField], fieldname: str) -> NNField | None:
    """The nn field a cluster-term field `nn.<key>` names (terms are case-folded, keys may not be)."""
    if not fieldname.startswith(CLUSTER_FIELD_PREFIX):
        return None
    key = fieldname[len(CLUSTER_FIELD_PREFIX) :]
    return next((f for k, f in fields.items() if k.casefold() == key), None)


def document_term(raw: str) -> str:
    """A normalised document term; the cluster-term fields `nn.<key>` are reserved for the nn fields."""
    term = normalize_term(raw)
    if term.startswith(CLUSTER_FIELD_PREFIX):
        raise ValueError(f"term {raw!r} uses the reserved field prefix {CLUSTER_FIELD_PREFIX!r}")
    return term


def parse_terms(terms: TermsInput) -> tuple[list[str], dict[str, float]]:
    """Normalised terms (first occurrence order) and the float32 payloads of those that carry one.

    `terms` is a list of "field:value" strings and (term, payload) pairs, or a mapping term -> payload
    (None: no payload). A term repeated with another payload is an error.
    """
    if isinstance(terms, str):
        raise ValueError("terms must be a list of strings or [term, payload] pairs, not one string")
    items = terms.items() if isinstance(terms, Mapping) else (_term_item(t) for t in terms)
    names: dict[str, float | None] = {}
    for raw, payload in items:
        if not isinstance(raw, str):
            raise ValueError(f"term {raw!r} is not a string")
        term = document_term(raw)
        value = None if payload is None else _payload(term, payload)
        if term in names and names[term] != value:
            raise ValueError(f"term {term!r} is given twice, with payloads {names[term]} and {value}")
        names[term] = value
    return list(names), {t: v for t, v in names.items() if v is not None}


def _term_item(item: object) -> tuple[object, object]:
    if isinstance(item, (list, tuple)):
        if len(item) != 2:
            raise ValueError(f"term {item!r} is not a string or a [term, payload] pair")
        return item[0], item[1]
    return item, None


def _payload(term: str, value: object) -> float:
    """A payload as the float32 value stored, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"payload of term {term!r} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or abs(float(value)) > _FLOAT32_MAX:
        raise ValueError(f"payload of term {term!r} must be a finite float32, got {value!r}")
    return float(np.float32(value))


def check_doc_id(doc_id: object) -> int:
    """`doc_id` as an int, or UpdateError when it is not a 64-bit integer."""
    if isinstance(doc_id, bool) or not isinstance(doc_id, (int, np.integer)):
        raise UpdateError(f"doc_id {doc_id!r} is not an integer")
    if not -(2**63) <= int(doc_id) < 2**63:
        raise UpdateError(f"doc_id {doc_id} does not fit in 64 bits")
    return int(doc_id)


def _unit(vector: np.ndarray, d: int, what: str, error: type[Exception]) -> np.ndarray:
    """`vector` scaled to unit length, or `error` naming what is wrong with it."""
    if vector.shape != (d,):
        raise error(f"{what} has {vector.size} dimensions, the index has {d}")
    if not np.all(np.isfinite(vector)):
        raise error(f"{what} has NaN or infinite values")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0.0 or not math.isfinite(norm):
        raise error(f"{what} has norm 0 and no direction")
    return (vector / norm).astype(np.float32)


def unit_vector(values: object, d: int, what: str, error: type[Exception]) -> np.ndarray:
    """Validate and normalise one query or document vector (public for the service)."""
    try:
        vector = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} is not a list of numbers") from exc
    return _unit(vector, d, what, error)
