"""The searchable documents of each vertical (people, groups, events) and the incumbent's index over them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ebr.simulator.population import Geography
from ebr.simulator.retriever import TermIndex
from ebr.simulator.text import tokens


@dataclass
class Vertical:
    """One vertical's documents, indexed by entity (user, group or event index)."""

    name: str
    doc_id: np.ndarray  # int64 per entity
    title: np.ndarray  # object
    loc_city: np.ndarray  # explicit location, -1 when none
    loc_region: np.ndarray
    popularity: np.ndarray
    row: np.ndarray  # entity -> row of the term index (popularity rank)
    entity: np.ndarray  # row -> entity
    index: TermIndex

    def __len__(self) -> int:
        return len(self.doc_id)


def make_vertical(
    name: str,
    first_doc_id: int,
    title: np.ndarray,
    loc_city: np.ndarray,
    loc_region: np.ndarray,
    popularity: np.ndarray,
    geo: Geography,
    scan_block: int,
) -> Vertical:
    """Documents get consecutive ids from first_doc_id; the index holds title words plus location words."""
    n = len(title)
    entity = np.lexsort((np.arange(n), -popularity))
    row = np.empty(n, dtype=np.int64)
    row[entity] = np.arange(n)
    city_words = {c: tokens(str(geo.city_name[c])) for c in range(geo.n_cities)}
    region_words = {r: tokens(str(geo.region_name[r])) for r in range(len(geo.region_name))}
    terms = []
    for e in entity:
        words = tokens(title[e])
        if loc_city[e] >= 0:
            words += city_words[loc_city[e]]
        if loc_region[e] >= 0:
            words += region_words[loc_region[e]]
        terms.append(words)
    locs = np.stack(
        [loc_city[entity], np.where(loc_region[entity] >= 0, geo.n_cities + loc_region[entity], -1)], axis=1
    )
    return Vertical(
        name=name,
        doc_id=first_doc_id + np.arange(n, dtype=np.int64),
        title=title,
        loc_city=loc_city,
        loc_region=loc_region,
        popularity=popularity,
        row=row,
        entity=entity,
        index=TermIndex(terms, locs, scan_block),
    )
