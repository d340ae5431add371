"""Training triplets from a mined table (ebr/mining/rounds.py): each mined positive with its mined negatives.

Where ebr/models/datamodule.py draws random negatives afresh every batch, this trains on the validated mined
table as written: the positives (clicks, impressions, hard positives) and, per positive, its easy and hard
negatives at the mined easy:hard ratio. A positive's negatives are padded to the batch's widest row, masked.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ebr.models.datamodule import shuffled_batches
from ebr.models.features import FeatureSet
from ebr.models.fields import Bags, take, to_tensors


def _rows(features: FeatureSet, sessions: np.ndarray, docs: np.ndarray, table: str) -> tuple[np.ndarray, ...]:
    s, d = features.session_rows(sessions), features.doc_rows(docs)
    bad = (s < 0) | (d < 0)
    bad[~bad] |= features.heldout[s[~bad]]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{table}: {int(bad.sum())} rows name an unknown or held-out session/document, "
            f"e.g. session {int(sessions[i])}, doc {int(docs[i])}"
        )
    return s, d


class MinedTripletCollator:
    """Pair indices -> tower inputs: the pair's query, its positive and its own mined negatives (masked)."""

    def __init__(
        self,
        features: FeatureSet,
        session_rows: np.ndarray,
        doc_rows: np.ndarray,
        negatives: Bags,
        query_fields: Sequence[str],
        doc_fields: Sequence[str],
    ) -> None:
        self.features = features
        self.session_rows, self.doc_rows, self.negatives = session_rows, doc_rows, negatives
        self.query_fields = {n: features.session_fields[n] for n in query_fields}
        self.doc_fields = {n: features.doc_fields[n] for n in doc_fields}

    def __call__(self, indices: list[int]) -> dict[str, object]:
        idx = np.asarray(indices, dtype=np.int64)
        s_rows, d_rows = self.session_rows[idx], self.doc_rows[idx]
        bags = self.negatives.take(idx)
        lengths = np.diff(bags.indptr)
        width = max(int(lengths.max(initial=0)), 1)
        slot = np.arange(width)[None, :]
        mask = slot < lengths[:, None]
        negatives = np.zeros((len(idx), width), np.int64)
        negatives[mask] = bags.ids  # row-major fill matches the bags' order
        return {
            "query": to_tensors(take(self.query_fields, s_rows)),
            "positive": to_tensors(take(self.doc_fields, d_rows)),
            "negatives": to_tensors(take(self.doc_fields, negatives.ravel())),
            "negative_mask": torch.from_numpy(mask),
            "positive_ids": torch.from_numpy(d_rows),
            "groups": torch.from_numpy(self.features.doc_vertical[d_rows]),
        }


class MinedTripletDataModule(L.LightningDataModule):
    """Shuffled (seeded) batches over the mined positives; one pass per epoch.

    positives: session_id, doc_id; negatives: session_id, positive_doc_id, doc_id (ebr/mining/rounds.py).
    """

    def __init__(
        self,
        features: FeatureSet,
        query_fields: Sequence[str],
        doc_fields: Sequence[str],
        positives: pd.DataFrame,
        negatives: pd.DataFrame,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if positives.empty:
            raise ValueError("mined_positives: no positives to train on")
        pos = positives[["session_id", "doc_id"]].drop_duplicates().sort_values(["session_id", "doc_id"])
        s_rows, d_rows = _rows(
            features,
            pos["session_id"].to_numpy(np.int64),
            pos["doc_id"].to_numpy(np.int64),
            "mined_positives",
        )
        # each negative goes to the pair (session, positive) it was mined for
        pair_index = pd.Series(np.arange(len(pos)), index=pd.MultiIndex.from_frame(pos))
        keys = pd.MultiIndex.from_arrays([negatives["session_id"], negatives["positive_doc_id"]])
        pair = pair_index.reindex(keys).to_numpy()
        if np.isnan(pair).any():
            i = int(np.flatnonzero(np.isnan(pair))[0])
            session, positive = negatives["session_id"].iat[i], negatives["positive_doc_id"].iat[i]
            raise ValueError(
                f"mined_negatives: row {i} belongs to no mined positive (session {session}, doc {positive})"
            )
        _, neg_rows = _rows(
            features,
            negatives["session_id"].to_numpy(np.int64),
            negatives["doc_id"].to_numpy(np.int64),
            "mined_negatives",
        )
        bags = Bags.from_groups(len(pos), pair.astype(np.int64), neg_rows, np.ones(len(neg_rows), np.float32))
        self.collator = MinedTripletCollator(features, s_rows, d_rows, bags, query_fields, doc_fields)
        self.batch_size = batch_size
        self.seed = seed

    @property
    def n_pairs(self) -> int:
        return len(self.collator.session_rows)

    def train_dataloader(self) -> DataLoader:
        return shuffled_batches(self.n_pairs, self.batch_size, self.collator, self.seed)
