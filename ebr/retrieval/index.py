"""The engine's index, `EngineIndex`: built from documents, changed in place, compacted, saved and loaded.

Its look-ups are those of `IndexReader` (ebr/retrieval/reader.py). A change (ebr/retrieval/documents.py)
appends a new document version under a fresh internal id and marks the old one dead; `compacted()` folds
everything into a new dense snapshot.

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

`load(folder, mmap=True)` maps the .npy arrays read-only and reads the faiss inverted lists memory-mapped
(faiss `IO_FLAG_MMAP`): the pages are the file's, shared by every process serving the folder. Nothing writes
into a snapshot array (changes go to deltas); a mapped field's lists cannot change, so the first change (or
compaction) copies them into memory (`own_lists`), in that process only. A mapped field holding every
document uses an array direct map until then (faiss's hashtable costs five times more, in every process).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np

from ebr.retrieval.documents import (
    Change,
    Delete,
    Document,
    DocumentExistsError,
    DocumentNotFoundError,
    TermsInput,
    Update,
    UpdateError,
    check_doc_id,
    document_term,
    frequencies,
    parse_terms,
    unit_vector,
)
from ebr.retrieval.quantized import NNField
from ebr.retrieval.reader import IndexReader
from ebr.retrieval.segment import Growable, csr_pair
from ebr.retrieval.terms import TEXT_PREFIX

FORMATS = (1, 2)  # 1: no payloads; 2: with postings_payloads.npy


class EngineIndex(IndexReader):
    """An IndexReader that is built, changed in place (realtime changes), compacted and written."""

    _mapped: frozenset[str] = frozenset()  # keys whose faiss lists are still memory-mapped (read-only)

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
        return cls(doc_ids, vocab, *csr_pair(docs, tids, len(doc_ids), len(vocab), payloads), fields)

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
        changes = list(changes)
        if changes:
            self.own_lists()
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
                delta = self._delta[tid] = Growable(np.int64)
            delta_payloads = self._delta_payloads.get(tid)
            if delta_payloads is None and term in payloads:
                backfill = np.full(len(delta), np.nan, dtype=np.float32)
                delta_payloads = self._delta_payloads[tid] = Growable(np.float32, backfill)
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
        self.own_lists()  # faiss cannot clone mapped lists
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
            *csr_pair(doc_col, remap[tid_col], len(live), len(vocab), pay_col),
            fields,
        )

    def save(self, folder: Path) -> None:
        """Write this index (compacted first when it holds changes) into an existing empty folder."""
        if self._delta_forward or self._dead:
            self.compacted().save(folder)
            return
        self.own_lists()  # faiss would write mapped lists as a reference to their file
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

    def own_lists(self) -> None:
        """Copy memory-mapped faiss lists into memory (they cannot change in place); a no-op once done.
        Callers hold the engine's write lock: a search must not be scanning the lists being replaced."""
        for key in sorted(self._mapped):
            in_memory_lists(self.fields[key].ivf)
        self._mapped = frozenset()

    @property
    def mapped(self) -> bool:
        """Whether some faiss lists are still shared memory maps of the snapshot files."""
        return bool(self._mapped)

    @classmethod
    def load(cls, folder: Path, mmap: bool = False) -> EngineIndex:
        """The index saved in `folder`; `mmap`: arrays and faiss lists mapped read-only from the files."""
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder}: not an engine index folder (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") not in FORMATS:
            raise ValueError(
                f"{meta_path}: format {meta.get('format')!r}, this engine reads formats {list(FORMATS)}"
            )
        keys = sorted(meta["keys"])
        fields = {key: NNField.read(key, folder / "nn" / f"{key}.faiss", mmap) for key in keys}

        def array(name: str) -> np.ndarray:  # a plain ndarray view: np.memmap's Python-level indexing is slow
            return np.asarray(np.load(folder / name, mmap_mode="r" if mmap else None))

        index = cls(
            array("doc_ids.npy"),
            json.loads((folder / "terms.json").read_text()),
            array("postings_offsets.npy"),
            array("postings.npy"),
            array("postings_payloads.npy") if meta["format"] == 2 else None,
            array("forward_offsets.npy"),
            array("forward.npy"),
            fields,
        )
        if mmap:
            index._mapped = frozenset(key for key, f in fields.items() if mapped_lists(f.ivf) is not None)
            dense = [key for key in index._mapped if fields[key].ntotal == index.internal_count]
            for key in dense:  # ids 0..n-1: an array direct map (8 bytes an id) for faiss's hashtable (~40)
                fields[key].ivf.set_direct_map_type(faiss.DirectMap.Array)
            if dense:
                return_freed_memory()
        return index


def mapped_lists(ivf: faiss.IndexIVF) -> faiss.OnDiskInvertedLists | None:
    """An IVF's inverted lists when they are a read-only memory map of its file (`IO_FLAG_MMAP`), set not
    to prefetch (faiss would start its prefetch threads at every search), or None."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        return None
    lists.prefetch_nthread = 0
    return lists


def in_memory_lists(ivf: faiss.IndexIVF) -> None:
    """Replace memory-mapped inverted lists by an in-memory copy, entry for entry (the direct map's list
    offsets stay valid)."""
    mapped = mapped_lists(ivf)
    if mapped is None:
        return
    lists = faiss.ArrayInvertedLists(mapped.nlist, mapped.code_size)
    for list_no in range(mapped.nlist):
        size = mapped.list_size(list_no)
        if size:
            ids, codes = mapped.get_ids(list_no), mapped.get_codes(list_no)
            lists.add_entries(list_no, size, ids, codes)
            mapped.release_ids(list_no, ids)
            mapped.release_codes(list_no, codes)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the IVF deletes it (and deleted the mapped lists)
    if ivf.direct_map.type == faiss.DirectMap.Array:  # removals and adds with ids need the hashtable
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


def return_freed_memory() -> None:
    """Give freed heap pages back to the system (glibc; elsewhere a no-op): faiss's hashtable replaced at
    open, an index replaced by a newer generation. Without it they stay resident in the process."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
