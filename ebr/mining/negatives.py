"""Random (easy) negatives, the documents never taken as hard negatives, and easy:hard mixing (paper §2.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from ebr.mining.keys import PairSet, index_of, sample_keys
from ebr.mining.positives import register_train_ids

NEGATIVE_COLUMNS = ["session_id", "positive_doc_id", "doc_id", "kind", "rank", "score"]


@dataclass(frozen=True)
class ExcludedDocs:
    """Documents never taken as hard negatives: every session of a group skips every document of its group.

    Grouped, the exclusions stay O(clicks); as (session, document) pairs they grow with the square of a
    query's popularity (649 million pairs on the `large` world; 1.1 million documents in 0.5 million
    groups)."""

    session_groups: pd.DataFrame  # session_id, group (int >= 0)
    group_docs: pd.DataFrame  # group, doc_id

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame) -> ExcludedDocs:
        """Explicit (session_id, doc_id) pairs: one group per session."""
        ids = pairs["session_id"].to_numpy(np.int64)
        sessions = np.unique(ids)
        return cls(
            pd.DataFrame({"session_id": sessions, "group": np.arange(len(sessions))}),
            pd.DataFrame(
                {"group": np.searchsorted(sessions, ids), "doc_id": pairs["doc_id"].to_numpy(np.int64)}
            ),
        )

    def pairs(self) -> pd.DataFrame:
        """The (session_id, doc_id) pairs, sorted (for small data: tests, inspection)."""
        merged = self.session_groups.merge(self.group_docs, on="group")[["session_id", "doc_id"]]
        return merged.sort_values(["session_id", "doc_id"], ignore_index=True)


def same_query_clicks(
    con: duckdb.DuckDBPyConnection, train_session_ids: np.ndarray, session_ids: np.ndarray
) -> ExcludedDocs:
    """Documents clicked, in any training session, for the same normalised query text and vertical as the
    session: likely false negatives, excluded from hard negatives on request. A group per (text, vertical)."""
    register_train_ids(con, train_session_ids)
    group_docs = con.execute(
        """
        WITH clicked AS (
            SELECT DISTINCT lower(trim(s.query)) AS q, s.vertical, i.doc_id
            FROM impressions i JOIN sessions s USING (session_id) JOIN _mine_train_ids t USING (session_id)
            WHERE i.clicked
        )
        SELECT q, vertical, (dense_rank() OVER (ORDER BY q, vertical) - 1)::BIGINT AS "group", doc_id
        FROM clicked ORDER BY "group", doc_id
        """
    ).df()
    con.register("_mine_groups", group_docs[["q", "vertical", "group"]].drop_duplicates())
    con.register("_mine_query_ids", pd.DataFrame({"session_id": np.asarray(session_ids, np.int64)}))
    session_groups = con.execute(
        """
        SELECT s.session_id, g."group"
        FROM sessions s JOIN _mine_query_ids USING (session_id)
        JOIN _mine_groups g ON g.q = lower(trim(s.query)) AND g.vertical = s.vertical
        ORDER BY s.session_id
        """
    ).df()
    return ExcludedDocs(session_groups, group_docs[["group", "doc_id"]])


def random_negatives(
    positives: pd.DataFrame, documents: pd.DataFrame, per_positive: int, seed: int, max_tries: int = 64
) -> pd.DataFrame:
    """`per_positive` documents drawn uniformly (with replacement) from the pool of the positive's vertical,
    never a positive of the same session. `documents` has columns doc_id, vertical."""
    if per_positive < 0:
        raise ValueError(f"mining.random_per_positive must be >= 0, got {per_positive}")
    pos = positives[["session_id", "doc_id", "vertical"]].reset_index(drop=True)
    if per_positive == 0 or pos.empty:
        return empty_negatives()
    doc_ids = np.sort(documents["doc_id"].to_numpy(np.int64))
    _, session_idx = np.unique(pos["session_id"].to_numpy(np.int64), return_inverse=True)
    known = PairSet(session_idx, index_of(doc_ids, pos["doc_id"].to_numpy(np.int64)), len(doc_ids))

    out = []
    for vertical, group in pos.groupby("vertical", sort=True):
        pool = np.sort(documents.loc[documents["vertical"] == vertical, "doc_id"].to_numpy(np.int64))
        if len(pool) == 0:
            raise ValueError(f"no documents of vertical {vertical!r} to draw random negatives from")
        rows = np.repeat(group.index.to_numpy(), per_positive)
        slot = np.tile(np.arange(per_positive, dtype=np.int64), len(group))
        s_id = pos["session_id"].to_numpy(np.int64)[rows]
        p_id = pos["doc_id"].to_numpy(np.int64)[rows]
        chosen = np.empty(len(rows), dtype=np.int64)
        todo = np.arange(len(rows))
        for attempt in range(max_tries):
            keys = sample_keys(seed, s_id[todo], p_id[todo], slot[todo], np.full(len(todo), attempt))
            chosen[todo] = pool[(keys % np.uint64(len(pool))).astype(np.int64)]
            clash = known.contains(session_idx[rows[todo]], index_of(doc_ids, chosen[todo]))
            todo = todo[clash]
            if not len(todo):
                break
        else:
            raise ValueError(
                f"could not draw random negatives for session {int(s_id[todo[0]])}: "
                f"its positives cover the {vertical!r} pool"
            )
        out.append(pd.DataFrame({"session_id": s_id, "positive_doc_id": p_id, "doc_id": chosen}))
    frame = pd.concat(out, ignore_index=True)
    frame["kind"] = "easy"
    frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int32")
    frame["score"] = np.float32("nan")
    return frame[NEGATIVE_COLUMNS]


def empty_negatives() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": pd.Series(dtype="int64"),
            "positive_doc_id": pd.Series(dtype="int64"),
            "doc_id": pd.Series(dtype="int64"),
            "kind": pd.Series(dtype="object"),
            "rank": pd.Series(dtype="Int32"),
            "score": pd.Series(dtype="float32"),
        }
    )


def mix(easy: pd.DataFrame, hard: pd.DataFrame, easy_hard_ratio: float, seed: int) -> pd.DataFrame:
    """Easy and hard negatives at `easy_hard_ratio` easy per hard one.

    Keeps n_hard = min(|hard|, floor(|easy| / ratio)) hard and n_easy = round(n_hard * ratio) easy negatives,
    each a seeded uniform subsample, so the realised ratio is exact when the ratio is an integer (and exact up
    to rounding otherwise). A ratio of 0 keeps the hard negatives only; `inf` keeps the easy ones only.
    """
    if not easy_hard_ratio >= 0:
        raise ValueError(f"mining.easy_hard_ratio must be >= 0, got {easy_hard_ratio}")
    if easy_hard_ratio == 0:
        return _subsample(hard, len(hard), seed)
    if math.isinf(easy_hard_ratio):
        return _subsample(easy, len(easy), seed)
    n_hard = min(len(hard), math.floor(len(easy) / easy_hard_ratio + 1e-9))
    n_easy = min(len(easy), round(n_hard * easy_hard_ratio))
    return pd.concat([_subsample(easy, n_easy, seed), _subsample(hard, n_hard, seed)], ignore_index=True)


def _subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` rows chosen by smallest seeded hash key of (session, positive, doc): order-independent."""
    if n >= len(frame):
        picked = frame
    else:
        keys = sample_keys(
            seed,
            frame["session_id"].to_numpy(np.int64),
            frame["positive_doc_id"].to_numpy(np.int64),
            frame["doc_id"].to_numpy(np.int64),
            (frame["kind"].to_numpy() == "hard").astype(np.int64),
        )
        picked = frame.iloc[np.sort(np.argsort(keys, kind="stable")[:n])]
    return picked.sort_values(["session_id", "positive_doc_id", "kind", "doc_id"], kind="stable").reset_index(
        drop=True
    )
