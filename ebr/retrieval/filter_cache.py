"""A bounded cache of filter sets: the documents a query's nn-free filter allows, with their faiss selectors.

Serving runs the same filters again and again (`(and (term vertical:people) (nn ...))`, one filter per
region, ...): building a 1M-bit bitmap or a hash set for faiss on every query costs as much as the scan of a
selective filter. An entry holds the sorted internal ids an (and)'s nn-free children allow, and, built on
first use, the id selector faiss scans with, its search parameters per (key, nprobe) and the cluster of each
id per key (the candidates plan's look-up).

Entries are keyed by the index, its state and the filter's nodes. The index's state is (internal ids,
dead versions): every realtime add or update appends a version (a fresh internal id) and every update or
delete kills one, so any change moves it, and compaction makes a new index object (whose entries are dropped
with the old one). Entries of an older state are never served; they are dropped at the next look-up.
The cache is an LRU bounded by bytes (ids, bitmaps, an estimate for hash sets); one too big is not kept.
It is shared by the threads of a process: changes are locked, a hit is a lock-free look-up (atomic dict
operations); entries are read-only once built, so a query holding one is never affected by its eviction.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

import faiss
import numpy as np

from ebr.retrieval.quantized import SearchParams
from ebr.retrieval.reader import IndexReader

HASH_BYTES_PER_ID = 48  # an std::unordered_set entry and its bloom filter share, faiss IDSelectorBatch


class FilterEntry:
    """The allowed internal ids of one filter (sorted, read-only) and, once built, their selector."""

    def __init__(self, ids: np.ndarray, on_grow: Callable[[FilterEntry, int], None] | None = None):
        self.ids = ids.view()  # read-only, without touching the caller's array
        self.ids.flags.writeable = False
        self.nbytes = int(ids.nbytes)
        self.selector: faiss.IDSelector | None = None
        self._bitmap: np.ndarray | None = None  # the memory a bitmap selector points into
        self._params: dict[tuple[str, int], SearchParams] = {}
        self._clusters: dict[str, np.ndarray] = {}  # key -> the cluster of each id under that key
        self._plans: dict[tuple[str, int, int], tuple[object, tuple]] = {}  # (key, nprobe, id(costs))
        self._lock = threading.Lock()
        self._on_grow = on_grow

    def get_selector(self, internal_count: int, use_bitmap: bool) -> faiss.IDSelector:
        """The faiss selector over the ids (a bitmap of `internal_count` bits or a hash set), built once."""
        if self.selector is not None:
            return self.selector
        grown = 0
        with self._lock:
            if self.selector is None:
                if use_bitmap:
                    bits = np.zeros(internal_count, dtype=bool)
                    bits[self.ids] = True
                    self._bitmap = np.packbits(bits, bitorder="little")
                    self.selector = faiss.IDSelectorBitmap(len(self._bitmap), faiss.swig_ptr(self._bitmap))
                    grown = self._bitmap.nbytes
                else:
                    ids = np.ascontiguousarray(self.ids, dtype=np.int64)
                    self.selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
                    grown = len(ids) * HASH_BYTES_PER_ID
                self.nbytes += grown
        if grown:
            self._grown(grown)
        return self.selector

    def clusters(self, key: str, clusters_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The cluster of each id under embedding `key` (`clusters_of(ids)`, looked up once)."""
        found = self._clusters.get(key)
        if found is not None:
            return found
        computed = clusters_of(self.ids)
        computed.flags.writeable = False
        with self._lock:
            found = self._clusters.get(key)
            if found is None:
                found = self._clusters[key] = computed
                self.nbytes += computed.nbytes
        if found is computed:
            self._grown(computed.nbytes)
        return found

    def _grown(self, nbytes: int) -> None:
        on_grow = self._on_grow
        if on_grow is not None:
            on_grow(self, nbytes)

    def plan(
        self,
        key: str,
        nprobe: int,
        costs: object,
        choose: Callable[[], tuple[str, SearchParams | None, float]],
    ) -> tuple[str, SearchParams | None, float]:
        """The push-down's (plan, search parameters, codes) for one key and nprobe under `costs` (compared
        by identity, the object kept), `choose()` on the first query."""
        known = self._plans.get((key, nprobe, id(costs)))
        if known is not None and known[0] is costs:
            return known[1]
        chosen = choose()
        self._plans[(key, nprobe, id(costs))] = (costs, chosen)
        return chosen

    def params(self, key: str, nprobe: int) -> SearchParams | None:
        """The search parameters with this entry's selector for one key and nprobe, once set."""
        return self._params.get((key, nprobe))

    def set_params(self, key: str, nprobe: int, pair: SearchParams) -> SearchParams:
        """Keep `pair` (parameters with this entry's selector) for one key and nprobe; the first kept wins.
        Read-only once kept: threads share them."""
        return self._params.setdefault((key, nprobe), pair)


class FilterCache:
    """LRU of FilterEntry by bytes, per index and index state; thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, FilterEntry] = OrderedDict()
        self._tokens: dict[int, tuple[weakref.ref, int]] = {}  # id(index) -> (the index, weakly; its token)
        self._states: dict[int, tuple[int, int]] = {}  # token -> the state its entries were made in
        self._counter = itertools.count()
        self._gone: list[tuple[int, int]] = []  # (id, token) of indexes collected since: entries dropped
        self._lock = threading.RLock()

    def _token(self, index: IndexReader) -> int:
        known = self._tokens.get(id(index))
        if known is not None and known[0]() is index:
            token = known[1]
        else:
            token = next(self._counter)
            self._tokens[id(index)] = (weakref.ref(index), token)
            weakref.finalize(index, self._gone.append, (id(index), token))  # any thread, mid-operation
        while self._gone:
            address, gone = self._gone.pop()
            if self._tokens.get(address, (None, None))[1] == gone:
                del self._tokens[address]
            self._states.pop(gone, None)
            self._forget(gone)
        return token

    def _forget(self, token: int) -> None:
        for key in [k for k in list(self._entries) if k[0] == token]:  # list(): one atomic copy
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.nbytes
        entry._on_grow = None

    def get(self, index: IndexReader, filters: Hashable, build: Callable[[], np.ndarray]) -> FilterEntry:
        """The entry of `filters` on `index` as it is now; `build()` gives the sorted ids on a miss."""
        state = (index.internal_count, index.dead_count)
        known = self._tokens.get(id(index))  # the common case first, without the lock (dict reads are atomic)
        if known is not None and known[0]() is index and self._states.get(known[1]) == state:
            entry = self._entries.get((known[1], filters))
            if entry is not None:
                try:  # noqa: SIM105 (a try is cheaper than contextlib.suppress on this path)
                    self._entries.move_to_end((known[1], filters))  # atomic (C), like the get
                except KeyError:  # evicted meanwhile: still valid for this query
                    pass
                self.hits += 1  # a statistic: a race may lose a count
                return entry
        with self._lock:
            token = self._token(index)
            if self._states.get(token) != state:
                self._forget(token)  # the index changed since: every entry of it is stale
                self._states[token] = state
            key = (token, filters)
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            self.misses += 1
        entry = FilterEntry(build(), self._grown)
        with self._lock:
            if self._states.get(token) != state or entry.nbytes > self.max_bytes:
                entry._on_grow = None
                return entry  # not kept: the index changed meanwhile, or it does not fit
            if key in self._entries:  # another thread built it meanwhile
                return self._entries[key]
            self._entries[key] = entry
            self.bytes += entry.nbytes
            self._evict()
        return entry

    def _grown(self, entry: FilterEntry, nbytes: int) -> None:
        with self._lock:
            if entry._on_grow is None:  # dropped meanwhile
                return
            self.bytes += nbytes
            self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


_SHARED: FilterCache | None = None
_SHARED_LOCK = threading.Lock()


def shared_cache(max_bytes: int) -> FilterCache:
    """The process's filter cache, of at most `max_bytes` (the caller's engine.planner.filter_cache_bytes)."""
    global _SHARED
    cache = _SHARED
    if cache is None:
        with _SHARED_LOCK:
            if _SHARED is None:
                _SHARED = FilterCache(max_bytes)
            cache = _SHARED
    if cache.max_bytes != max_bytes:
        cache.resize(max_bytes)
    return cache
