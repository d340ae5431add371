"""Training triplets: positives from training sessions only, negatives from the positive's vertical, mined
negatives from a (session_id, doc_id) table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ebr.models.datamodule import TripletDataModule, training_pairs
from ebr.models.features import FeatureSet


def test_positives_are_training_clicks(tiny_features: FeatureSet) -> None:
    pairs = training_pairs(tiny_features, "clicks")
    assert not tiny_features.heldout[pairs.session_rows].any()
    imp = tiny_features.impressions
    clicked = set(zip(imp.loc[imp.clicked, "session_row"], imp.loc[imp.clicked, "doc_row"], strict=True))
    assert set(zip(pairs.session_rows, pairs.doc_rows, strict=True)) <= clicked
    assert len(training_pairs(tiny_features, "impressions").session_rows) > len(pairs.session_rows)
    with pytest.raises(ValueError, match="train.positives"):
        training_pairs(tiny_features, "views")


def test_batches_draw_negatives_from_the_positive_vertical(tiny_features: FeatureSet) -> None:
    data = TripletDataModule(tiny_features, ["text_trigrams"], ["text_trigrams", "vertical"], 32, 3, seed=1)
    batch = next(iter(data.train_dataloader()))
    positive_vertical = batch["positive"]["vertical"].numpy()
    negative_vertical = batch["negatives"]["vertical"].numpy().reshape(-1, 3)
    assert (negative_vertical == positive_vertical[:, None]).all()
    assert batch["negative_mask"].shape == (32, 3)
    assert (batch["groups"].numpy() + 1 == positive_vertical).all()


def test_mined_negatives_are_added(tiny_features: FeatureSet) -> None:
    pairs = training_pairs(tiny_features, "clicks")
    session_id = tiny_features.session_ids[pairs.session_rows[0]]
    heldout_id = tiny_features.session_ids[np.flatnonzero(tiny_features.heldout)[0]]
    mined = pd.DataFrame(
        {"session_id": [session_id, session_id, heldout_id], "doc_id": tiny_features.doc_ids[[3, 4, 5]]}
    )
    data = TripletDataModule(
        tiny_features, ["text_trigrams"], ["text_trigrams"], 8, 2, mined=mined, mined_negatives=2
    )
    batch = data.collator(list(range(len(pairs.session_rows))))
    mask = batch["negative_mask"].numpy()
    assert mask.shape[1] == 4
    with_mined = pairs.session_rows == pairs.session_rows[0]
    assert mask[with_mined, 2:].all() and not mask[~with_mined, 2:].any()
    negatives = batch["negatives"]["text_trigrams"][1].numpy()  # offsets: one bag per negative
    assert len(negatives) == 4 * len(pairs.session_rows)
