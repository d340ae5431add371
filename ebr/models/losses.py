"""Triplet loss on the cosine distance (paper §2.2): max(0, D(q, d+) - D(q, d-) + m), D = 1 - cos."""

from __future__ import annotations

import torch


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos along the last dimension (inputs need not be normalised); broadcasts."""
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)


def triplet_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over valid triplets of max(0, D(q, d+) - D(q, d-) + margin).

    query, positive: (B, d); negatives: (B, n, d); mask: (B, n) bool, False for padding negatives.
    The paper sums over triplets; the mean keeps the learning rate independent of batch size and n.
    """
    d_pos = cosine_distance(query, positive).unsqueeze(1)  # (B, 1)
    d_neg = cosine_distance(query.unsqueeze(1), negatives)  # (B, n)
    losses = torch.relu(d_pos - d_neg + margin)
    if mask is None:
        return losses.mean()
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / mask.sum().clamp(min=1.0)
