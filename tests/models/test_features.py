"""Feature tables from DuckDB: the time split, no held-out leakage into vocabularies, OOV, document fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig
from tiny_logs import write_db

from ebr.models.features import FeatureSet, MissingTableError, build_features, split_sessions
from ebr.models.vocab import OOV
from ebr.schema import VERTICALS


def test_split_cuts_train_tune_evaluate_by_time(tiny_db: Path, tiny_tables_: dict[str, pd.DataFrame]) -> None:
    split = split_sessions(tiny_db, 150, 250, 0.2)
    ordered = tiny_tables_["sessions"].sort_values(["ts", "session_id"])["session_id"].tolist()
    assert split.evaluate_session_ids.tolist() == sorted(ordered[-250:])
    assert split.tune_session_ids.tolist() == sorted(ordered[-400:-250])
    assert split.heldout_session_ids.tolist() == sorted(ordered[-400:])
    assert len(split.train_session_ids) == len(ordered) - 400 and split.warning is None
    shares = split_sessions(tiny_db, 0.05, 0.1, 0.2)
    assert (len(shares.tune_session_ids), len(shares.evaluate_session_ids)) == (120, 240)
    with pytest.raises(ValueError, match="data.split.tune must be a count"):
        split_sessions(tiny_db, 1.5, 10, 0.2)


def test_split_clamps_to_max_fraction_with_warning(tiny_db: Path) -> None:
    split = split_sessions(tiny_db, 5_000, 5_000, 0.1)
    assert len(split.heldout_session_ids) == 240
    assert "data.split.tune=5000 + data.split.evaluate=5000" in split.warning
    assert "data.split.max_heldout_fraction=0.1" in split.warning and "120 for tuning" in split.warning


def test_heldout_values_do_not_enter_vocabularies(
    tmp_path: Path, tiny_tables_: dict[str, pd.DataFrame], fast_cfg: DictConfig
) -> None:
    tables = {k: v.copy() for k, v in tiny_tables_.items()}
    sessions = tables["sessions"]
    latest = sessions["ts"] >= sessions["ts"].sort_values().iloc[-400]
    sessions.loc[latest, "city"] = "atlantis"
    sessions.loc[latest, "language"] = "klingon"
    db = write_db(tables, tmp_path / "ebr.duckdb")
    features = build_features(db, fast_cfg, split_sessions(db, 200, 200, 0.2))
    vocabs = features.featurizer.vocabs
    assert "atlantis" not in vocabs["city"].values and "klingon" not in vocabs["language"].values
    held = features.heldout
    assert held.sum() == 400
    assert (features.session_fields["city"][held] == OOV).all()
    assert (features.session_fields["city"][~held] != OOV).all()


def test_unknown_searcher_gets_empty_lookups(tiny_features: FeatureSet) -> None:
    fields = tiny_features.featurizer.featurize(
        ["john smith", "mary"],
        np.array([-1, 5]),
        {n: [None, "paris"] for n in ("city", "region", "country", "language")},
    )
    assert fields["home_city"][0] == OOV and not fields["social"][0].any()
    assert fields["social_clusters"].rows()[0] == []
    assert fields["home_city"][1] != OOV and fields["social"][1].any() and fields["social_clusters"].rows()[1]
    assert fields["city"].tolist() == [OOV, tiny_features.featurizer.vocabs["city"].lookup(["paris"])[0]]


def test_document_fields_per_vertical(
    tiny_features: FeatureSet, tiny_tables_: dict[str, pd.DataFrame]
) -> None:
    docs = tiny_features.doc_fields
    vertical = tiny_features.doc_vertical
    assert tiny_features.verticals == ("events", "groups", "people")  # the documents' verticals, sorted
    people, groups, events = (np.flatnonzero(vertical == tiny_features.verticals.index(v)) for v in VERTICALS)
    assert len(people) == 180 and len(groups) == 18 and len(events) == 9
    host_lengths = np.diff(docs["host_trigrams"].indptr)
    assert (host_lengths[events] > 0).all() and (host_lengths[people] == 0).all()
    # members' locations: a weighted multi-hot summing to 1 for every group with members
    member_weights = [sum(w for _, w in row) for row in docs["member_cities"].take(groups).rows()]
    assert member_weights == pytest.approx([1.0] * len(groups))
    assert np.linalg.norm(docs["social"][groups], axis=1) == pytest.approx(np.ones(len(groups)), rel=1e-5)
    assert (docs["city"][people] != OOV).all()
    assert tiny_features.stats["impressions_dropped_unknown"] == 0


def test_missing_required_table_is_named(tmp_path: Path, tiny_tables_: dict[str, pd.DataFrame]) -> None:
    db = write_db({"documents": tiny_tables_["documents"]}, tmp_path / "ebr.duckdb")
    with pytest.raises(MissingTableError, match="sessions, impressions"):
        split_sessions(db, 5, 5, 0.2)
    with pytest.raises(MissingTableError, match="no DuckDB file"):
        split_sessions(tmp_path / "absent.duckdb", 5, 5, 0.2)


def test_text_only_logs_drop_social_fields(
    tmp_path: Path, tiny_tables_: dict[str, pd.DataFrame], fast_cfg: DictConfig
) -> None:
    from ebr.models.training import tower_fields, variant

    required = {k: tiny_tables_[k] for k in ("documents", "sessions", "impressions")}
    db = write_db(required, tmp_path / "ebr.duckdb")
    features = build_features(db, fast_cfg, split_sessions(db, 200, 200, 0.2))
    assert features.signals == {"users": False, "friendships": False, "memberships": False}
    query, document, notes = tower_fields(fast_cfg, features, variant(fast_cfg, "unified"))
    assert "social" not in query and "member_cities" not in document and "city" in query
    assert any("no friendships table" in n for n in notes)
