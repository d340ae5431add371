"""The incumbent retriever whose results the simulated searchers see: exact normalised terms, AND semantics.

A document matches when every query term is one of its terms (title words plus the words of its explicit
city and region). Matches are gathered from candidate sources in rank order (e.g. the searcher's friends, then
friends of friends, then documents in the searcher's city, then everything) and, within a source, by
popularity; the first k distinct matches are shown. Misspelled, run-together, abbreviated or extra words make
the term match fail, which is exactly what embedding-based retrieval is for.

Rows of an index are the vertical's documents in popularity order (row 0 = most popular), so that "by
popularity" is "by row".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ebr.simulator.text import tokens


@dataclass(frozen=True)
class Global:
    """Every document of the vertical."""


@dataclass(frozen=True)
class Located:
    """Documents whose explicit location is `loc` (a city id, or a region id offset past the cities)."""

    loc: int


# An array source holds candidate rows (e.g. the searcher's friends); a callable makes them only when reached.
Source = np.ndarray | Callable[[], np.ndarray] | Located | Global


class TermIndex:
    """Inverted index of one vertical; rows are documents in popularity order."""

    def __init__(self, doc_terms: Sequence[Sequence[str]], doc_locs: np.ndarray, scan_block: int) -> None:
        """doc_terms[row]: the row's terms; doc_locs[row]: the row's location ids (-1: none), shape (n, m)."""
        self.vocab: dict[str, int] = {}
        rows, toks = [], []
        for row, terms in enumerate(doc_terms):
            for t in dict.fromkeys(terms):
                rows.append(row)
                toks.append(self.vocab.setdefault(t, len(self.vocab)))
        row_arr = np.asarray(rows, dtype=np.int64)
        tok_arr = np.asarray(toks, dtype=np.int64)
        self.scan_block = scan_block
        order = np.lexsort((row_arr, tok_arr))
        self.post_rows = row_arr[order]
        self.post_ptr = np.searchsorted(tok_arr[order], np.arange(len(self.vocab) + 1))
        self.post_len = np.diff(self.post_ptr).tolist()
        # (term, location) postings: a term's rows per location, still in popularity order.
        has = doc_locs[row_arr] >= 0  # (entries, m)
        entry, j = np.nonzero(has)
        self.n_locs = int(doc_locs.max()) + 1 if doc_locs.size else 1
        keys = tok_arr[entry] * self.n_locs + doc_locs[row_arr[entry], j]
        order = np.lexsort((row_arr[entry], keys))
        self.loc_keys = keys[order]
        self.loc_rows = row_arr[entry][order]

    def term_ids(self, query: str) -> list[int] | None:
        """The query's distinct term ids, rarest first; None when a term is unknown (nothing can match)."""
        ids = []
        for t in tokens(query):
            i = self.vocab.get(t)
            if i is None:
                return None
            ids.append(i)
        return sorted(dict.fromkeys(ids), key=self.post_len.__getitem__) or None

    def _term_rows(self, term: int) -> np.ndarray:
        return self.post_rows[self.post_ptr[term] : self.post_ptr[term + 1]]

    def _match(self, rows: np.ndarray, term_ids: Sequence[int]) -> np.ndarray:
        """Rows that hold every term (looked up in each term's sorted posting list)."""
        for t in term_ids:
            if not len(rows):
                break
            posting = self._term_rows(t)
            pos = np.minimum(np.searchsorted(posting, rows), len(posting) - 1)
            rows = rows[posting[pos] == rows]
        return rows

    def _posting(self, term: int, source: Located | Global) -> np.ndarray:
        if isinstance(source, Global):
            return self._term_rows(term)
        key = term * self.n_locs + source.loc
        lo, hi = np.searchsorted(self.loc_keys, [key, key + 1])
        return self.loc_rows[lo:hi]

    def _scan(self, posting: np.ndarray, others: Sequence[int]) -> Iterator[np.ndarray]:
        """Matching rows of a posting list, block by block (blocks double in size)."""
        start, size = 0, self.scan_block
        while start < len(posting):
            yield self._match(posting[start : start + size], others)
            start, size = start + size, size * 2

    def search(self, query: str, sources: Sequence[Source], k: int, exclude: int = -1) -> np.ndarray:
        """The first k distinct matching rows, source by source, by popularity within a source."""
        term_ids = self.term_ids(query)
        if term_ids is None:
            return np.empty(0, dtype=np.int64)
        found: list[int] = []
        seen = {exclude}
        for source in sources:
            if isinstance(source, Located | Global):
                blocks = self._scan(self._posting(term_ids[0], source), term_ids[1:])
            else:
                rows = source() if callable(source) else source
                blocks = iter([self._match(np.sort(rows), term_ids)])
            for block in blocks:
                for row in block.tolist():
                    if row not in seen:
                        seen.add(row)
                        found.append(row)
                        if len(found) == k:
                            return np.array(found, dtype=np.int64)
        return np.array(found, dtype=np.int64)
