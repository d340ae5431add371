"""One embedding key of the index: a faiss IVF index whose lists are the key's cluster terms.

Each document embedding is quantised into a coarse-cluster term (its IVF list, spelled `nn.<key>:<list>`)
plus a payload (its code). The ids stored in faiss are the engine's internal document ids. Scores are the
inner-product estimates faiss computes from the codes for the (L2-normalised) query: cosine similarity up
to quantisation.

Supported indexes (`unsupported_reason` says why another is not), optionally behind `IndexPreTransform`
(OPQ, PCA), built with METRIC_INNER_PRODUCT:

- `IndexIVF` with flat codes (IVF-PQ, IVF-Flat, IVF-SQ; IMI coarse quantisers too): the score is the inner
  product of the query with the decoded vector;
- 4-bit fast-scan PQ without residual encoding (`IVF...,PQ{m}x4fs`, `IndexIVFPQFastScan`): codes packed in
  blocks of 32 (`BlockInvertedLists`); the score is faiss's SIMD estimate from 8-bit quantised look-up
  tables (within ~1e-2 of the decoded inner product), the same for a document whatever lists are probed;
- RaBitQ (`IVF...,RaBitQ`, `RaBitQ{b}`: `IndexIVFRaBitQ`, 1 + (b - 1) bits per dimension): the score is
  RaBitQ's estimate of the inner product (not the decoded vector's), also independent of the probed lists.

For the last two, a document's score outside a scan (the candidates plan, scores of documents another
clause found) is computed by faiss's own scan restricted to that document's list and id, so every plan
gives a document the same score. Fast-scan lists cannot be edited in place by faiss (no direct map with
blocked lists): removal rebuilds the affected lists from their unpacked codes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

_SCANNER_MAX_IDS = 256  # above: one restricted scan of their lists costs less than a call per code
# faiss keeps entries with score > threshold; this makes "1 - score <= radius" inclusive at the boundary.
_BELOW = np.float32(-np.inf)


class UnsupportedIndexError(ValueError):
    """A faiss index the engine cannot use as an (nn) field."""


SearchParams = tuple[faiss.SearchParameters, faiss.SearchParametersIVF]  # the wrapper's, and the IVF's


@dataclass
class Probe:
    """The nprobe cluster terms nearest one query vector (in the IVF's own space)."""

    query: np.ndarray  # (1, d_ivf) float32, after the pre-transform
    lists: np.ndarray  # (nprobe,) int64, -1 padded


class NNField:
    """The quantised embeddings of one key: probe clusters, scan them, add and remove documents."""

    def __init__(self, key: str, index: faiss.Index):
        self.key = key
        self.index = index
        self.ivf = _checked_ivf(key, index)
        self.transforms = _transforms(index)
        self.d = index.d
        self._nlist = int(self.ivf.nlist)  # read once: a swig attribute costs a microsecond per query
        self._coarse_code_size = self.ivf.coarse_code_size()
        self._code_size = int(self.ivf.sa_code_size()) - self._coarse_code_size  # payload bytes per code
        self._blocked = _blocked_lists(self.ivf)  # fast-scan codes: packed in blocks, no direct map
        self._estimated = self._blocked is not None or isinstance(self.ivf, faiss.IndexIVFRaBitQ)
        self._centroids: np.ndarray | None = None  # read at the first estimated score
        # faiss's range search is wrong for these: fast-scan compares in its quantised 16-bit domain, and
        # multi-bit RaBitQ prunes by its 1-bit estimate (measured: misses in-radius codes)
        multi_bit = isinstance(self.ivf, faiss.IndexIVFRaBitQ) and int(self.ivf.rabitq.nb_bits) > 1
        self._radius_via_top_k = self._blocked is not None or multi_bit
        self._shared_params: dict[int, tuple[faiss.SearchParameters, faiss.SearchParametersIVF]] = {}
        # each internal id's cluster (-1: none) and each cluster's size, kept in step with the lists
        postings = [self.cluster_postings(list_no) for list_no in range(self.nlist)]
        self._sizes = np.array([len(p) for p in postings], dtype=np.int64)
        self._ntotal = int(self._sizes.sum())
        self._list_of = np.full(max((int(p[-1]) + 1 for p in postings if len(p)), default=0), -1, np.int32)
        for list_no, ids in enumerate(postings):
            self._list_of[ids] = list_no

    # ----- files
    @classmethod
    def read(cls, key: str, path: Path, mmap: bool = False) -> NNField:
        """The field stored at `path`; `mmap`: its inverted lists stay in the file's pages, shared by the
        processes that map it, and read-only (ebr/retrieval/index.py copies them in at the first change)."""
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return cls(key, faiss.read_index(str(path), flags))

    def write(self, path: Path) -> None:
        self.index.ntotal = self.ivf.ntotal  # a pre-transform wrapper does not see removals on the IVF
        faiss.write_index(self.index, str(path))

    @classmethod
    def empty_like(cls, key: str, trained: faiss.Index) -> NNField:
        """An empty field with the trained quantisers of `trained` (its documents dropped)."""
        _checked_ivf(key, trained)
        index = faiss.clone_index(trained)
        index.reset()
        ivf = faiss.extract_index_ivf(index)
        if _blocked_lists(ivf) is None:  # blocked lists have none: removal rebuilds lists (`remove`)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(key, index)

    # ----- sizes
    @property
    def nlist(self) -> int:
        return self._nlist

    @property
    def ntotal(self) -> int:
        return self._ntotal

    def list_sizes(self, lists: np.ndarray) -> int:
        """How many codes the given cluster terms hold (the cost of scanning them)."""
        return int(self._sizes[lists[lists >= 0]].sum())

    def expected_codes(self, nprobe: int) -> float:
        """The codes `nprobe` average clusters hold: the planner's estimate of a scan's cost."""
        return min(nprobe, self.nlist) * self._ntotal / self.nlist

    def clusters_of(self, ids: np.ndarray) -> np.ndarray:
        """The cluster of each internal id (-1 when it has no embedding under this key)."""
        known = ids < len(self._list_of)
        out = np.full(len(ids), -1, dtype=np.int32)
        out[known] = self._list_of[ids[known]]
        return out

    def _track(self, ids: np.ndarray, lists: np.ndarray | np.int32) -> None:
        if len(ids) == 0:
            return
        top = int(ids.max()) + 1
        if top > len(self._list_of):
            grown = np.full(max(top, 2 * len(self._list_of)), -1, dtype=np.int32)
            grown[: len(self._list_of)] = self._list_of
            self._list_of = grown
        self._list_of[ids] = lists
        np.add.at(self._sizes, np.broadcast_to(lists, ids.shape), 1)
        self._ntotal += len(ids)

    def _untrack(self, ids: np.ndarray) -> None:
        lists = self.clusters_of(ids)
        present = lists >= 0
        np.subtract.at(self._sizes, lists[present], 1)
        self._list_of[ids[present]] = -1
        self._ntotal -= int(present.sum())

    def cluster_postings(self, list_no: int) -> np.ndarray:
        """The internal ids whose embedding falls in cluster `list_no` (the posting list of its term)."""
        invlists = self.ivf.invlists
        size = invlists.list_size(list_no)
        ids = np.empty(size, dtype=np.int64)
        if size:
            ptr = invlists.get_ids(list_no)
            faiss.memcpy(faiss.swig_ptr(ids), ptr, ids.nbytes)
            invlists.release_ids(list_no, ptr)
        return np.sort(ids)

    # ----- queries
    def to_ivf_space(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.d)
        for transform in self.transforms:
            x = transform.apply(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def probe(self, vector: np.ndarray, nprobe: int) -> Probe:
        """The `nprobe` coarse clusters nearest `vector` (the OR of their cluster terms is the nn rewrite)."""
        query = self.to_ivf_space(vector)
        n = min(nprobe, self._nlist)
        distances, lists = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64)
        self.ivf.quantizer.search_c(
            1, faiss.swig_ptr(query), n, faiss.swig_ptr(distances), faiss.swig_ptr(lists)
        )
        return Probe(query=query, lists=lists)

    def scan_radius(
        self,
        vector: np.ndarray,
        nprobe: int,
        min_score: float,
        selector: faiss.IDSelector | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Documents of the `nprobe` clusters nearest `vector` scoring >= min_score (and in `selector`;
        `params`: `search_params(nprobe, selector)` made before, used instead).

        One faiss call (pre-transform, coarse quantiser, list scan) as a plain faiss range search does.
        """
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.d)
        result = faiss.RangeSearchResult(1)
        threshold = _threshold(min_score)
        if params is None:
            params = self.search_params(nprobe, selector)  # the pair stays referenced for the call
        if self._radius_via_top_k:
            return self._radius_by_top_k(vector, nprobe, min_score, params)
        self.index.range_search_c(1, faiss.swig_ptr(query), threshold, result, params[0])
        count = int(faiss.rev_swig_ptr(result.lims, 2)[1])
        ids = faiss.rev_swig_ptr(result.labels, count).copy()
        scores = faiss.rev_swig_ptr(result.distances, count).copy()
        return ids, scores

    def scan_top_k(
        self, vector: np.ndarray, nprobe: int, k: int, params: SearchParams | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best-scoring documents of the `nprobe` clusters nearest `vector` (one faiss search), best
        first (equal scores in no particular order); `params`: `search_params(nprobe, selector)` to score
        only the selector's documents."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.d)
        scores = np.empty(k, dtype=np.float32)
        ids = np.empty(k, dtype=np.int64)
        if params is None:
            params = self.search_params(nprobe, None)
        self.index.search_c(
            1, faiss.swig_ptr(query), k, faiss.swig_ptr(scores), faiss.swig_ptr(ids), params[0]
        )
        if ids[-1] >= 0:  # k found: faiss pads only the tail with -1
            return ids, scores
        found = int(np.argmax(ids < 0))  # the padding is a run of -1 at the end
        return ids[:found], scores[:found]

    def _radius_by_top_k(
        self, vector: np.ndarray, nprobe: int, min_score: float, params: SearchParams
    ) -> tuple[np.ndarray, np.ndarray]:
        """A radius scan where faiss's range search is wrong (fast-scan: compares in its quantised 16-bit
        domain, drops scores equal to the radius and returns nothing below 0; multi-bit RaBitQ: misses
        codes): a top-k search with k = the codes the `nprobe` largest lists hold, cut at min_score."""
        nprobe = min(nprobe, self._nlist)
        k = max(int(np.partition(self._sizes, self._nlist - nprobe)[self._nlist - nprobe :].sum()), 1)
        ids, scores = self.scan_top_k(vector, nprobe, k, params)
        keep = int(np.searchsorted(-scores, -np.float32(min_score), side="right"))  # best first
        return ids[:keep].copy(), scores[:keep].copy()

    def search_params(self, nprobe: int, selector: faiss.IDSelector | None) -> SearchParams:
        """Search parameters for the wrapper index, and the IVF parameters they point to (keep both, and the
        selector, alive during the search); those without a selector are made once and shared. Read-only
        once made: threads may share them."""
        return self._params(nprobe, selector)

    def _params(
        self, nprobe: int, selector: faiss.IDSelector | None
    ) -> tuple[faiss.SearchParameters, faiss.SearchParametersIVF]:
        """Search parameters for the wrapper index, and the IVF parameters they point to (keep both alive
        during the search); those without a selector are made once and shared."""
        nprobe = min(nprobe, self._nlist)
        if selector is None and nprobe in self._shared_params:
            return self._shared_params[nprobe]
        ivf_params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        params = ivf_params
        if self.transforms:
            params = faiss.SearchParametersPreTransform(index_params=ivf_params)
        if selector is None:
            self._shared_params[nprobe] = (params, ivf_params)  # read-only from now on: safe across threads
        return params, ivf_params

    def score(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Scores of stored documents against `query` (already in IVF space) from their codes: decoded, or
        faiss's estimate for fast-scan PQ and RaBitQ (the score a scan gives them)."""
        if len(ids) == 0:
            return np.empty(0, dtype=np.float32)
        if self._estimated:
            return self._estimated_scores(query, np.ascontiguousarray(ids, dtype=np.int64))
        decoded = self.ivf.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        return np.einsum("ij,j->i", decoded, query.reshape(-1))  # no BLAS thread pool for a mat-vec

    def _estimated_scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """faiss's estimates for stored `ids` (unique), the same computation as in a search (the estimate
        does not depend on which other lists are probed): few flat codes one by one with faiss's list
        scanner, otherwise a scan of their lists restricted to them."""
        if self._centroids is None:
            self._centroids = self.ivf.quantizer.reconstruct_n(0, self._nlist)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._blocked is None and len(ids) <= _SCANNER_MAX_IDS:
            return self._scanned_scores(query, ids)
        lists = np.unique(self.clusters_of(ids)).astype(np.int64).reshape(1, -1)
        if lists[0, 0] < 0:
            raise KeyError(f"embedding key {self.key!r}: some ids have no code")
        coarse = (self._centroids[lists[0]] @ query[0]).astype(np.float32).reshape(1, -1)
        selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
        params = faiss.SearchParametersIVF(nprobe=lists.shape[1], sel=selector)
        k = len(ids)
        scores, found = np.empty((1, k), dtype=np.float32), np.empty((1, k), dtype=np.int64)
        self.ivf.search_preassigned_c(
            1,
            faiss.swig_ptr(query),
            k,
            faiss.swig_ptr(lists),
            faiss.swig_ptr(coarse),
            faiss.swig_ptr(scores),
            faiss.swig_ptr(found),
            False,
            params,
            None,
        )
        order = np.argsort(found[0])
        pos = np.searchsorted(found[0], ids, sorter=order)
        if found.shape[1] != len(ids) or not np.array_equal(found[0][order[pos]], ids):
            raise KeyError(f"embedding key {self.key!r}: the ids to score are not unique stored ids")
        return scores[0][order[pos]]

    def _scanned_scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Estimates of few flat codes (found by the direct map) from faiss's inverted-list scanner."""
        scanner = self.ivf.get_InvertedListScanner(False, None, None)
        scanner.set_query(faiss.swig_ptr(query[0]))
        invlists, out, current = self.ivf.invlists, np.empty(len(ids), dtype=np.float32), -1
        order = np.argsort(self.clusters_of(ids), kind="stable")  # one set_list per list
        for row, internal_id in zip(order.tolist(), ids[order].tolist(), strict=True):
            packed = self.ivf.direct_map.get(internal_id)
            list_no, offset = packed >> 32, packed & 0xFFFFFFFF
            if list_no != current:
                scanner.set_list(list_no, float(self._centroids[list_no] @ query[0]))
                current = list_no
            ptr = invlists.get_single_code(list_no, offset)
            out[row] = scanner.distance_to_code(ptr)
            invlists.release_codes(list_no, ptr)
        return out

    def contains(self, internal_id: int) -> bool:
        return internal_id < len(self._list_of) and self._list_of[internal_id] >= 0

    # ----- updates
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Quantise `vectors` (L2-normalised rows) and store them under `ids`."""
        x = self.to_ivf_space(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        _, assign = self.ivf.quantizer.search(x, 1)
        assign = np.ascontiguousarray(assign[:, 0])
        if self._blocked is not None:  # add_core writes flat codes; faiss's own add packs them in blocks
            self.ivf.add_with_ids(x, ids)  # assigns as above: the same quantizer search
            self._track(ids, assign.astype(np.int32))
            return
        self.ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(assign))
        self._track(ids, assign.astype(np.int32))

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ids = ids[self.clusters_of(ids) >= 0]
        if len(ids) == 0:
            return 0
        if self._blocked is not None:
            removed = self._remove_blocked(ids)
        else:
            removed = int(self.ivf.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))))
        self._untrack(ids)
        return removed

    def _remove_blocked(self, ids: np.ndarray) -> int:
        """Remove stored `ids` from fast-scan lists: each affected list is rebuilt from its unpacked codes
        (faiss removes from blocked lists only by a scan of every list, and keeps no direct map for them)."""
        lists = self.clusters_of(ids)
        removed = 0
        for list_no in np.unique(lists).tolist():
            list_ids, list_codes = self._list_entries(list_no)
            keep = ~np.isin(list_ids, ids[lists == list_no])
            removed += int((~keep).sum())
            self._write_list(list_no, list_ids[keep], list_codes[keep])
        self.ivf.ntotal -= removed
        return removed

    def _write_list(self, list_no: int, ids: np.ndarray, codes: np.ndarray) -> None:
        """Replace fast-scan list `list_no` by `ids` and their payload codes, packed in blocks."""
        blocked, per_block, block_size = (
            self._blocked,
            int(self._blocked.n_per_block),
            int(self._blocked.block_size),
        )
        blocks = -(-len(ids) // per_block)
        flat = np.zeros((blocks * per_block, self._code_size), dtype=np.uint8)
        flat[: len(ids)] = codes
        packed = np.zeros(blocks * block_size, dtype=np.uint8)
        for b in range(blocks):
            blocked.packer.pack_all(
                faiss.swig_ptr(flat[b * per_block :]), faiss.swig_ptr(packed[b * block_size :])
            )
        blocked.resize(list_no, 0)
        if len(ids):  # appended to an empty list, the packed blocks are copied as they are
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            blocked.add_entries(list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(packed))

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """The standalone codes (cluster number + payload) of stored documents, shape (n, sa_code_size)."""
        out = np.empty((len(ids), self.ivf.sa_code_size()), dtype=np.uint8)
        if self._blocked is not None:
            for row, internal_id in enumerate(np.asarray(ids, dtype=np.int64).tolist()):
                list_no = int(self.clusters_of(np.array([internal_id]))[0])
                list_ids, list_codes = self._list_entries(list_no)
                out[row, : self._coarse_code_size] = _little_endian(list_no, self._coarse_code_size)
                offset = int(np.flatnonzero(list_ids == internal_id)[0])
                out[row, self._coarse_code_size :] = list_codes[offset]
            return out
        invlists = self.ivf.invlists
        for row, internal_id in enumerate(ids):
            packed = self.ivf.direct_map.get(int(internal_id))
            list_no, offset = packed >> 32, packed & 0xFFFFFFFF
            out[row, : self._coarse_code_size] = _little_endian(list_no, self._coarse_code_size)
            ptr = invlists.get_single_code(list_no, offset)
            out[row, self._coarse_code_size :] = faiss.rev_swig_ptr(ptr, invlists.code_size)
            invlists.release_codes(list_no, ptr)
        return out

    def add_codes(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Store already-quantised codes (from `codes`) under new ids: an exact copy, no re-encoding."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        lists = coarse_lists(codes, self._coarse_code_size)
        if self._blocked is not None:  # faiss appends to blocked lists only in whole packed blocks
            for list_no in np.unique(lists).tolist():
                old_ids, old_codes = self._list_entries(list_no)
                new = lists == list_no
                payload = codes[new][:, self._coarse_code_size :]
                self._write_list(
                    list_no, np.concatenate([old_ids, ids[new]]), np.concatenate([old_codes, payload])
                )
            self.ivf.ntotal += len(ids)
        else:
            self.ivf.add_sa_codes(np.ascontiguousarray(codes), ids)
        self._track(ids, lists.astype(np.int32))

    def all_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (internal id, standalone code), list by list."""
        ids, codes = [], []
        for list_no in range(self.nlist):
            list_ids, list_codes = self._list_entries(list_no)
            size = len(list_ids)
            if not size:
                continue
            coarse = np.tile(_little_endian(list_no, self._coarse_code_size), (size, 1))
            ids.append(list_ids)
            codes.append(np.concatenate([coarse, list_codes], axis=1))
        if not ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self.ivf.sa_code_size()), dtype=np.uint8)
        return np.concatenate(ids), np.concatenate(codes)

    def _list_entries(self, list_no: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and payload codes (unpacked from blocks for fast-scan lists) of one inverted list."""
        invlists = self.ivf.invlists
        size = invlists.list_size(list_no)
        list_ids = np.empty(size, dtype=np.int64)
        list_codes = np.empty((size, self._code_size), dtype=np.uint8)
        if not size:
            return list_ids, list_codes
        ids_ptr, codes_ptr = invlists.get_ids(list_no), invlists.get_codes(list_no)
        faiss.memcpy(faiss.swig_ptr(list_ids), ids_ptr, list_ids.nbytes)
        if self._blocked is None:
            faiss.memcpy(faiss.swig_ptr(list_codes), codes_ptr, list_codes.nbytes)
        else:
            packer, per_block = self._blocked.packer, int(self._blocked.n_per_block)
            blocks = -(-size // per_block)
            packed = faiss.rev_swig_ptr(codes_ptr, blocks * int(self._blocked.block_size))
            block = np.empty((per_block, self._code_size), dtype=np.uint8)
            for b in range(blocks):
                start = b * int(self._blocked.block_size)
                packer.unpack_all(faiss.swig_ptr(packed[start:]), faiss.swig_ptr(block))
                rows = min(per_block, size - b * per_block)
                list_codes[b * per_block : b * per_block + rows] = block[:rows]
        invlists.release_ids(list_no, ids_ptr)
        invlists.release_codes(list_no, codes_ptr)
        return list_ids, list_codes

    def renumbered(self, mapping: np.ndarray) -> NNField:
        """A copy whose ids are `mapping[old_id]` (old ids mapped to -1 are dropped); codes copied exactly."""
        fresh = NNField.empty_like(self.key, self.index)
        ids, codes = self.all_entries()
        new_ids = mapping[ids] if len(ids) else ids
        keep = new_ids >= 0
        if keep.any():
            order = np.argsort(new_ids[keep], kind="stable")
            fresh.add_codes(new_ids[keep][order], codes[keep][order])
        return fresh

    def memory_bytes(self) -> int:
        """Bytes of codes and ids in the inverted lists plus the cluster of each id (direct map excluded)."""
        return self.ntotal * (self._code_size + 8) + self._list_of.nbytes


@functools.lru_cache(maxsize=1024)
def _threshold(min_score: float) -> float:
    """faiss keeps scores > threshold: the float32 just below `min_score`, so that the check is inclusive."""
    return float(np.nextafter(np.float32(min_score), _BELOW))


def coarse_lists(codes: np.ndarray, coarse_code_size: int) -> np.ndarray:
    """The cluster numbers in the first bytes (little-endian) of standalone IVF codes."""
    lists = np.zeros(len(codes), dtype=np.int64)
    for b in range(coarse_code_size):
        lists |= codes[:, b].astype(np.int64) << (8 * b)
    return lists


def _little_endian(value: int, size: int) -> np.ndarray:
    return np.frombuffer(int(value).to_bytes(8, "little"), dtype=np.uint8)[:size]


def unsupported_reason(index: faiss.Index) -> str | None:
    """Why the engine cannot serve `index` as an (nn) field (None: it can). Cheap: reads no lists."""
    if not isinstance(index, (faiss.IndexIVF, faiss.IndexPreTransform)):
        return f"unsupported wrapper {type(faiss.downcast_index(index)).__name__} (e.g. a refine index)"
    try:
        ivf = _ivf_of(index)
    except RuntimeError:
        return "faiss index is not an IVF index"
    kind = type(ivf).__name__
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "the index must use METRIC_INNER_PRODUCT"
    if not ivf.is_trained:
        return "the faiss index is not trained"
    if isinstance(ivf, faiss.IndexIVFPQFastScan):
        if ivf.by_residual:  # faiss quantises the per-list biases with the tables, jointly over the probe
            return f"{kind} with residual codes (x4fsr): its scores depend on the lists probed"
        return None
    if isinstance(ivf, faiss.IndexIVFRaBitQFastScan):
        return f"{kind}: its scores depend on the lists probed (tables quantised jointly over the probe)"
    if ivf.invlists.code_size == faiss.InvertedLists.INVALID_CODE_SIZE or "FastScan" in kind:
        return f"{kind}: only IVF-PQ fast-scan codes are supported among blocked (fast-scan) codes"
    return None


def _checked_ivf(key: str, index: faiss.Index) -> faiss.IndexIVF:
    reason = unsupported_reason(index)
    if reason is not None:
        raise UnsupportedIndexError(f"embedding key {key!r}: {reason}")
    return _ivf_of(index)


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF:
    """The IVF index inside `index`, as its own class (IndexIVFPQFastScan, IndexIVFRaBitQ, ...)."""
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def _blocked_lists(ivf: faiss.IndexIVF) -> faiss.BlockInvertedLists | None:
    """The fast-scan (blocked) inverted lists of `ivf`, None for flat codes."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.BlockInvertedLists) else None


def _transforms(index: faiss.Index) -> list[faiss.VectorTransform]:
    if not isinstance(index, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
