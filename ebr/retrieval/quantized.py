"""One embedding key of the index: a faiss IVF index whose lists are the key's cluster terms.

Each document embedding is quantised into a coarse-cluster term (its IVF list, spelled `nn.<key>:<list>`)
plus a payload (its PQ code, residual to the centroid). The ids stored in faiss are the engine's internal
document ids. Scores are inner products of the (L2-normalised) query with the quantised document vector,
the asymmetric-distance estimate faiss computes from the codes: cosine similarity up to quantisation.

Every supported index is an `IndexIVF` with flat codes (IVF-PQ, IVF-Flat, IVF-SQ; IMI coarse quantisers
too), optionally behind `IndexPreTransform` (OPQ, PCA), built with METRIC_INNER_PRODUCT.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

# faiss keeps entries with score > threshold; this makes "1 - score <= radius" inclusive at the boundary.
_BELOW = np.float32(-np.inf)


class UnsupportedIndexError(ValueError):
    """A faiss index the engine cannot use as an (nn) field."""


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
    def read(cls, key: str, path: Path) -> NNField:
        return cls(key, faiss.read_index(str(path)))

    def write(self, path: Path) -> None:
        self.index.ntotal = self.ivf.ntotal  # a pre-transform wrapper does not see removals on the IVF
        faiss.write_index(self.index, str(path))

    @classmethod
    def empty_like(cls, key: str, trained: faiss.Index) -> NNField:
        """An empty field with the trained quantisers of `trained` (its documents dropped)."""
        index = faiss.clone_index(trained)
        index.reset()
        ivf = faiss.extract_index_ivf(index)
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
        _, lists = self.ivf.quantizer.search(query, min(nprobe, self.nlist))
        return Probe(query=query, lists=lists[0])

    def scan_radius(
        self, vector: np.ndarray, nprobe: int, min_score: float, selector: faiss.IDSelector | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Documents of the `nprobe` clusters nearest `vector` scoring >= min_score (and in `selector`).

        One faiss call (pre-transform, coarse quantiser, list scan) as a plain faiss range search does.
        """
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.d)
        result = faiss.RangeSearchResult(1)
        threshold = _threshold(min_score)
        params = self._params(nprobe, selector)  # the pair stays referenced for the call
        self.index.range_search_c(1, faiss.swig_ptr(query), threshold, result, params[0])
        count = int(faiss.rev_swig_ptr(result.lims, 2)[1])
        ids = faiss.rev_swig_ptr(result.labels, count).copy()
        scores = faiss.rev_swig_ptr(result.distances, count).copy()
        return ids, scores

    def scan_top_k(self, vector: np.ndarray, nprobe: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best-scoring documents of the `nprobe` clusters nearest `vector` (one faiss search)."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.d)
        scores = np.empty((1, k), dtype=np.float32)
        ids = np.empty((1, k), dtype=np.int64)
        params = self._params(nprobe, None)
        self.index.search_c(
            1, faiss.swig_ptr(query), k, faiss.swig_ptr(scores), faiss.swig_ptr(ids), params[0]
        )
        found = ids[0] >= 0
        return ids[0][found], scores[0][found]

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
        """Scores of stored documents against `query` (already in IVF space) from their decoded codes."""
        if len(ids) == 0:
            return np.empty(0, dtype=np.float32)
        decoded = self.ivf.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        return np.einsum("ij,j->i", decoded, query.reshape(-1))  # no BLAS thread pool for a mat-vec

    def contains(self, internal_id: int) -> bool:
        return internal_id < len(self._list_of) and self._list_of[internal_id] >= 0

    # ----- updates
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Quantise `vectors` (L2-normalised rows) and store them under `ids`."""
        x = self.to_ivf_space(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        _, assign = self.ivf.quantizer.search(x, 1)
        assign = np.ascontiguousarray(assign[:, 0])
        self.ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(assign))
        self._track(ids, assign.astype(np.int32))

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        ids = ids[self.clusters_of(ids) >= 0]
        if len(ids) == 0:
            return 0
        removed = int(self.ivf.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))))
        self._untrack(ids)
        return removed

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """The standalone codes (cluster number + payload) of stored documents, shape (n, sa_code_size)."""
        out = np.empty((len(ids), self.ivf.sa_code_size()), dtype=np.uint8)
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
        self.ivf.add_sa_codes(np.ascontiguousarray(codes), ids)
        self._track(ids, coarse_lists(codes, self._coarse_code_size).astype(np.int32))

    def all_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored (internal id, standalone code), list by list."""
        ids, codes = [], []
        invlists = self.ivf.invlists
        for list_no in range(self.nlist):
            size = invlists.list_size(list_no)
            if not size:
                continue
            list_ids = np.empty(size, dtype=np.int64)
            list_codes = np.empty((size, invlists.code_size), dtype=np.uint8)
            ids_ptr, codes_ptr = invlists.get_ids(list_no), invlists.get_codes(list_no)
            faiss.memcpy(faiss.swig_ptr(list_ids), ids_ptr, list_ids.nbytes)
            faiss.memcpy(faiss.swig_ptr(list_codes), codes_ptr, list_codes.nbytes)
            invlists.release_ids(list_no, ids_ptr)
            invlists.release_codes(list_no, codes_ptr)
            coarse = np.tile(_little_endian(list_no, self._coarse_code_size), (size, 1))
            ids.append(list_ids)
            codes.append(np.concatenate([coarse, list_codes], axis=1))
        if not ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self.ivf.sa_code_size()), dtype=np.uint8)
        return np.concatenate(ids), np.concatenate(codes)

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
        return self.ntotal * (int(self.ivf.invlists.code_size) + 8) + self._list_of.nbytes


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


def _checked_ivf(key: str, index: faiss.Index) -> faiss.IndexIVF:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError as exc:
        raise UnsupportedIndexError(f"embedding key {key!r}: faiss index is not an IVF index") from exc
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or ivf.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise UnsupportedIndexError(f"embedding key {key!r}: the index must use METRIC_INNER_PRODUCT")
    if not ivf.is_trained:
        raise UnsupportedIndexError(f"embedding key {key!r}: the faiss index is not trained")
    if ivf.invlists.code_size == faiss.InvertedLists.INVALID_CODE_SIZE or "FastScan" in type(ivf).__name__:
        raise UnsupportedIndexError(f"embedding key {key!r}: fast-scan (blocked) codes are not supported")
    if not isinstance(index, (faiss.IndexIVF, faiss.IndexPreTransform)):
        raise UnsupportedIndexError(f"embedding key {key!r}: unsupported wrapper {type(index).__name__}")
    return ivf


def _transforms(index: faiss.Index) -> list[faiss.VectorTransform]:
    if not isinstance(index, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
