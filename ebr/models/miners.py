"""Online hard negative mining in the batch (paper §6.1): for each query, the other queries' positives are the
candidate negatives, and the k most similar to the query become its hard negatives."""

from __future__ import annotations

import torch


@torch.no_grad()
def hardest_in_batch(
    query: torch.Tensor,
    positive: torch.Tensor,
    k: int,
    positive_ids: torch.Tensor,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, k) into the batch's positives of each query's k most similar candidates, and a mask.

    A candidate is excluded when it is the query's own positive document (same id: another query clicked the
    same document) or, with `groups` (e.g. the vertical), when it belongs to another group. Rows with fewer
    than k candidates get invalid (mask False) slots.
    """
    sim = query @ positive.T  # (B, B): cosine, rows are L2-normalised
    excluded = positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)
    if groups is not None:
        excluded |= groups.unsqueeze(0) != groups.unsqueeze(1)
    sim = sim.masked_fill(excluded, float("-inf"))
    k = min(k, sim.shape[1])
    values, indices = sim.topk(k, dim=1)
    return indices, torch.isfinite(values)
