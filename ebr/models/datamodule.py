"""Training triplets: (query, positive, negatives) from the training sessions of a FeatureSet.

Positives are clicked documents (or all impressed ones). Negatives per positive: `random_negatives`
documents drawn uniformly from the positive's vertical, redrawn every batch, plus up to `mined_negatives` from
an optional mined table of (session_id, doc_id) pairs (e.g. offline hard negatives). With `validation_pairs`,
whole training sessions (seeded, about that many pairs, at most a tenth of them) are kept out of training as
the validation slice: its batches (random negatives drawn once) give the validation loss of every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ebr.models.features import FeatureSet
from ebr.models.fields import Bags, take, to_tensors


@dataclass(frozen=True)
class TrainingPairs:
    session_rows: np.ndarray
    doc_rows: np.ndarray


def training_pairs(features: FeatureSet, positives: str) -> TrainingPairs:
    """Distinct (session, document) positives of the training sessions: `clicks` or `impressions`."""
    if positives not in ("clicks", "impressions"):
        raise ValueError(f"train.positives: expected clicks or impressions, got {positives!r}")
    imp = features.impressions
    keep = ~features.heldout[imp["session_row"].to_numpy()]
    if positives == "clicks":
        keep &= imp["clicked"].to_numpy()
    pairs = (
        imp.loc[keep, ["session_row", "doc_row"]].drop_duplicates().sort_values(["session_row", "doc_row"])
    )
    return TrainingPairs(pairs["session_row"].to_numpy(np.int64), pairs["doc_row"].to_numpy(np.int64))


def validation_split(pairs: TrainingPairs, n: int, seed: int) -> tuple[TrainingPairs, TrainingPairs]:
    """(training, validation): whole sessions, in a seeded order, moved to validation while their pairs add
    up to at most min(n, a tenth of the pairs), so that a small log keeps its training data."""
    budget = min(n, len(pairs.session_rows) // 10)
    sessions, counts = np.unique(pairs.session_rows, return_counts=True)
    order = np.random.default_rng([seed, 17]).permutation(len(sessions))
    chosen = sessions[order[np.cumsum(counts[order]) <= budget]]
    held = np.isin(pairs.session_rows, chosen)
    part = [TrainingPairs(pairs.session_rows[m], pairs.doc_rows[m]) for m in (~held, held)]
    return part[0], part[1]


def mined_bags(features: FeatureSet, mined: pd.DataFrame) -> Bags:
    """The mined negatives table (session_id, doc_id) as one bag of document rows per session; rows naming an
    unknown session or document, or a held-out session, are dropped."""
    s = features.session_rows(mined["session_id"].to_numpy(np.int64))
    d = features.doc_rows(mined["doc_id"].to_numpy(np.int64))
    ok = (s >= 0) & (d >= 0)
    ok[ok] &= ~features.heldout[s[ok]]
    return Bags.from_groups(len(features.session_ids), s[ok], d[ok], np.ones(int(ok.sum()), np.float32))


class TripletCollator:
    """Turns a list of pair indices into tower inputs; draws the random (and mined) negatives."""

    def __init__(
        self,
        features: FeatureSet,
        pairs: TrainingPairs,
        query_fields: Sequence[str],
        doc_fields: Sequence[str],
        random_negatives: int,
        mined: Bags | None,
        mined_negatives: int,
        seed: int,
    ) -> None:
        self.features = features
        self.pairs = pairs
        self.query_fields = {n: features.session_fields[n] for n in query_fields}
        self.doc_fields = {n: features.doc_fields[n] for n in doc_fields}
        self.random_negatives = random_negatives
        self.mined = mined
        self.mined_negatives = mined_negatives if mined is not None else 0
        self.rng = np.random.default_rng(seed)
        verticals = features.doc_vertical
        self.pools = {v: np.flatnonzero(verticals == v) for v in np.unique(verticals)}

    @property
    def negatives_per_positive(self) -> int:
        return self.random_negatives + self.mined_negatives

    def __call__(self, indices: list[int]) -> dict[str, object]:
        idx = np.asarray(indices, dtype=np.int64)
        s_rows, d_rows = self.pairs.session_rows[idx], self.pairs.doc_rows[idx]
        groups = self.features.doc_vertical[d_rows]
        negatives, valid = self._random(groups)
        if self.mined_negatives:
            m_neg, m_valid = self._mined(s_rows)
            negatives, valid = np.hstack([negatives, m_neg]), np.hstack([valid, m_valid])
        valid &= negatives != d_rows[:, None]
        return {
            "query": to_tensors(take(self.query_fields, s_rows)),
            "positive": to_tensors(take(self.doc_fields, d_rows)),
            "negatives": to_tensors(take(self.doc_fields, negatives.ravel())),
            "negative_mask": torch.from_numpy(valid),
            "positive_ids": torch.from_numpy(d_rows),
            "groups": torch.from_numpy(groups),
        }

    def _random(self, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.random_negatives
        out = np.zeros((len(groups), n), np.int64)
        for v in np.unique(groups):
            rows = np.flatnonzero(groups == v)
            pool = self.pools[v]
            out[rows] = pool[self.rng.integers(0, len(pool), size=(len(rows), n))]
        return out, np.ones_like(out, dtype=bool)

    def _mined(self, s_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts, lengths = self.mined.indptr[s_rows], np.diff(self.mined.indptr)[s_rows]
        draws = (self.rng.random((len(s_rows), self.mined_negatives)) * lengths[:, None]).astype(np.int64)
        positions = np.minimum(starts[:, None] + draws, max(len(self.mined.ids) - 1, 0))
        doc_rows = self.mined.ids[positions] if len(self.mined.ids) else np.zeros_like(positions)
        return doc_rows, np.broadcast_to(lengths[:, None] > 0, positions.shape).copy()


class TripletDataModule(L.LightningDataModule):
    """Shuffled batches of training triplets (seeded); one pass over the positives per epoch."""

    def __init__(
        self,
        features: FeatureSet,
        query_fields: Sequence[str],
        doc_fields: Sequence[str],
        batch_size: int,
        random_negatives: int,
        positives: str = "clicks",
        mined: pd.DataFrame | None = None,
        mined_negatives: int = 0,
        seed: int = 0,
        validation_pairs: int = 0,
    ) -> None:
        super().__init__()
        self.pairs = training_pairs(features, positives)
        if len(self.pairs.session_rows) == 0:
            raise ValueError(f"no training positives ({positives}) in the training sessions")
        self.pairs, self.validation = validation_split(self.pairs, validation_pairs, seed)
        self.batch_size = batch_size
        self.seed = seed
        self.collator = TripletCollator(
            features,
            self.pairs,
            query_fields,
            doc_fields,
            random_negatives,
            mined_bags(features, mined) if mined is not None else None,
            mined_negatives,
            seed,
        )
        self.validation_batches: list[dict[str, object]] = []
        if len(self.validation.session_rows):
            val = TripletCollator(
                features, self.validation, query_fields, doc_fields, random_negatives, None, 0, seed + 1
            )
            n = len(self.validation.session_rows)
            self.validation_batches = [
                val(list(range(a, min(a + batch_size, n)))) for a in range(0, n, batch_size)
            ]

    @property
    def n_pairs(self) -> int:
        return len(self.pairs.session_rows)

    def train_dataloader(self) -> DataLoader:
        return shuffled_batches(self.n_pairs, self.batch_size, self.collator, self.seed)

    def val_dataloader(self) -> DataLoader | list:
        """The validation batches as drawn once (no slice: an empty list, Lightning then skips validation)."""
        return (
            DataLoader(self.validation_batches, batch_size=None, collate_fn=_as_is)
            if self.validation_batches
            else []
        )


def shuffled_batches(n_pairs: int, batch_size: int, collate: Callable, seed: int) -> DataLoader:
    """Seeded, shuffled batches of pair indices, collated into tensors by `collate`."""
    return DataLoader(
        range(n_pairs),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )


def _as_is(batch: dict[str, object]) -> dict[str, object]:
    return batch
