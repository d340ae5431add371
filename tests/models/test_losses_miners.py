"""Triplet loss against hand-computed values; the online miner picks exactly the hardest candidates."""

from __future__ import annotations

import math

import pytest
import torch

from ebr.models.losses import cosine_distance, triplet_loss
from ebr.models.miners import hardest_in_batch


def test_triplet_loss_hand_computed() -> None:
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt(2): D+ = 1 - 0.70711 = 0.29289
    negs = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])  # D- = 1, 0, 2
    d_pos = 1 - 1 / math.sqrt(2)
    # margin 0.5: max(0, .29289 - 1 + .5) = 0; max(0, .29289 - 0 + .5) = .79289; max(0, .29289 - 2 + .5) = 0
    assert triplet_loss(q, pos, negs, margin=0.5).item() == pytest.approx((d_pos + 0.5) / 3, abs=1e-6)
    # margin 0.8: 0.09289, 1.09289, 0 -> mean over the 3 triplets
    expected = ((d_pos - 1 + 0.8) + (d_pos + 0.8)) / 3
    assert triplet_loss(q, pos, negs, margin=0.8).item() == pytest.approx(expected, abs=1e-6)


def test_triplet_loss_mask_excludes_padding() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    # valid triplets: (0,0): 0 - 0 + .2 = .2; (1,0): 0 - 2 + .2 -> 0; (1,1): .2
    assert triplet_loss(q, pos, negs, 0.2, mask).item() == pytest.approx(0.4 / 3, abs=1e-6)
    assert cosine_distance(q[0], negs[1, 0]).item() == pytest.approx(1.0)


def test_miner_picks_exactly_the_hardest() -> None:
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    p = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    ids = torch.arange(6)
    idx, valid = hardest_in_batch(q, p, 2, ids)
    sim = q @ p.T
    for i in range(6):
        others = [j for j in range(6) if j != i]
        expected = sorted(others, key=lambda j: -sim[i, j].item())[:2]
        assert idx[i].tolist() == expected
    assert valid.all()


def test_miner_excludes_same_document_and_other_groups() -> None:
    q = torch.eye(4)
    p = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0.8, 0, 0.2, 0], [0.7, 0, 0, 0.3]])
    p = torch.nn.functional.normalize(p, dim=1)
    # row 0 and row 1 clicked the same document: never each other's negative; row 3 is another vertical
    ids = torch.tensor([5, 5, 6, 7])
    groups = torch.tensor([0, 0, 0, 1])
    idx, valid = hardest_in_batch(q, p, 2, ids, groups)
    assert idx[0, 0].item() == 2 and valid[0].tolist() == [True, False]
    assert valid[3].tolist() == [False, False]
