"""Vocabularies (OOV bucket) and the compressed bag columns."""

from __future__ import annotations

import numpy as np

from ebr.models.fields import Bags, take
from ebr.models.vocab import OOV, Vocab


def test_vocab_unseen_and_missing_values_go_to_oov() -> None:
    vocab = Vocab.build([["Seattle", "seattle ", "Paris", None], ["Louisville"]], min_count=1)
    assert vocab.values == ("seattle", "louisville", "paris")
    assert len(vocab) == 4
    assert vocab.lookup(["SEATTLE", "paris", "Atlantis", None, float("nan")]).tolist() == [
        1,
        3,
        OOV,
        OOV,
        OOV,
    ]


def test_vocab_min_count_and_round_trip() -> None:
    vocab = Vocab.build([["a", "a", "b"]], min_count=2)
    assert vocab.lookup(["a", "b"]).tolist() == [1, OOV]
    assert Vocab.from_list(vocab.to_list()) == vocab


def test_bags_take_and_groups() -> None:
    bags = Bags.from_groups(
        4, np.array([2, 0, 2, 0]), np.array([7, 1, 8, 2]), np.array([0.5, 1.0, 0.5, 2.0], np.float32)
    )
    assert bags.rows() == [[(1, 1.0), (2, 2.0)], [], [(7, 0.5), (8, 0.5)], []]
    picked = bags.take(np.array([2, 1, 0, 2]))
    assert picked.rows() == [[(7, 0.5), (8, 0.5)], [], [(1, 1.0), (2, 2.0)], [(7, 0.5), (8, 0.5)]]
    fields = take({"b": bags, "c": np.array([10, 11, 12, 13])}, np.array([3, 0]))
    assert fields["c"].tolist() == [13, 10] and fields["b"].rows() == [[], [(1, 1.0), (2, 2.0)]]
