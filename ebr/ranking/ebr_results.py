"""The EBR results of a request: its hits that term matching alone would not have returned, i.e. that only the
expression's (nn) part found (the paper's §5: what raters label and the relevance filter judges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ebr.retrieval.query import matches_nothing, nn_nodes, without_nn
from ebr.retrieval.stages import Retrieved

if TYPE_CHECKING:
    from ebr.retrieval.service import SearchService


def ebr_results(service: SearchService, retrieved: Retrieved) -> np.ndarray:
    """Boolean mask over `retrieved.hits`: True where the hit does not match the expression's term part
    (`without_nn`). Evaluated by the engine within the hits only (`Engine.matches`): the cost follows the
    number of hits, not the index. An expression without (nn) has no EBR results; one whose term part
    matches nothing has only EBR results."""
    doc_ids = np.asarray(retrieved.hits.doc_ids, dtype=np.int64)
    if len(doc_ids) == 0 or not nn_nodes(retrieved.root):
        return np.zeros(len(doc_ids), dtype=bool)
    term_part = without_nn(retrieved.root)
    if matches_nothing(term_part):
        return np.ones(len(doc_ids), dtype=bool)
    return ~service.engine.matches(term_part, doc_ids)
