"""Held-out sessions as serving sees them: per vertical, the search requests (query text, searcher, context)
and the documents each session clicked; what calibration and the recall gate send through the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ebr.models.features import FeatureSet
from ebr.retrieval.calibration import Sessions
from ebr.retrieval.service import SearchRequest


def session_requests(db_path: Path, features: FeatureSet, part: str) -> dict[str, Sessions]:
    """The sessions of one part of the split (tune, evaluate) that clicked something, per vertical."""
    ids = features.session_ids[features.part_rows(part)]
    with duckdb.connect(str(db_path), read_only=True) as con:
        con.register("_part_ids", pd.DataFrame({"session_id": ids}))
        sessions = con.execute(
            "SELECT s.session_id, s.user_id, s.query, s.city, s.region, s.country, s.language, s.vertical "
            "FROM sessions s JOIN _part_ids USING (session_id) ORDER BY s.session_id"
        ).df()
        clicks = con.execute(
            "SELECT i.session_id, i.doc_id FROM impressions i JOIN _part_ids USING (session_id) "
            "WHERE i.clicked ORDER BY i.session_id, i.doc_id"
        ).df()
    targets = clicks.groupby("session_id")["doc_id"].apply(np.asarray).to_dict()
    out: dict[str, Sessions] = {}
    for vertical, group in sessions.groupby("vertical", sort=True):
        group = group[group["session_id"].isin(targets)]
        requests = [
            SearchRequest(
                vertical=str(vertical),
                query_text=r.query,
                searcher_id=_int(r.user_id),
                context={c: _str(getattr(r, c)) for c in ("city", "region", "country", "language")},
            )
            for r in group.itertuples()
        ]
        out[str(vertical)] = Sessions(requests, [targets[s] for s in group["session_id"]])
    return out


def _int(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def _str(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
