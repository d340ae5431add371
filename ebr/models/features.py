"""Query and document feature tables from the DuckDB log tables, with a time-based held-out split.

Nothing computed from held-out sessions enters vocabularies or training examples: vocabularies use users,
documents and training sessions only. The social graph (friendships, memberships) is not session data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ebr.models.fields import Bags, Fields
from ebr.models.query_features import CONTEXT, QueryFeaturizer, UserLookup
from ebr.models.social import (
    build_graph,
    learn_social,
    lookup_rows,
    member_aggregates,
    merge_duplicates,
    user_cluster_bags,
)
from ebr.models.text_features import TextHasher
from ebr.models.vocab import Vocab
from ebr.schema import LOG_TABLES, VERTICALS

log = logging.getLogger(__name__)

REQUIRED = tuple(t.name for t in LOG_TABLES if t.required)


class MissingTableError(RuntimeError):
    pass


@dataclass(frozen=True)
class Split:
    """Sessions ordered by (ts, session_id): the latest `heldout` are held out, the rest train."""

    train_session_ids: np.ndarray
    heldout_session_ids: np.ndarray
    requested: int
    warning: str | None = None

    def summary(self) -> dict[str, object]:
        return {
            "train_sessions": len(self.train_session_ids),
            "heldout_sessions": len(self.heldout_session_ids),
            "heldout_requested": self.requested,
            "warning": self.warning,
        }


@dataclass
class FeatureSet:
    """Feature columns of every document and session, the query featuriser (exported with query towers) and
    the impressions, all in row indices: documents in doc_id order, sessions in session_id order."""

    featurizer: QueryFeaturizer
    doc_ids: np.ndarray
    doc_vertical: np.ndarray  # index into VERTICALS, -1 for an unknown vertical
    doc_titles: np.ndarray  # object array, for the BM25 baseline
    doc_fields: Fields
    session_ids: np.ndarray
    session_vertical: np.ndarray
    session_queries: np.ndarray
    session_fields: Fields
    heldout: np.ndarray  # bool per session
    impressions: pd.DataFrame  # session_row, doc_row, position, clicked
    signals: dict[str, bool]
    split: Split
    sizes: dict[str, int] = field(default_factory=dict)  # embedding-table sizes per field
    stats: dict[str, object] = field(default_factory=dict)

    def doc_rows(self, doc_ids: np.ndarray) -> np.ndarray:
        return lookup_rows(self.doc_ids, doc_ids)

    def session_rows(self, session_ids: np.ndarray) -> np.ndarray:
        return lookup_rows(self.session_ids, session_ids)


def connect(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Read-only connection; raises MissingTableError naming the file and the missing required tables."""
    if not Path(db_path).exists():
        raise MissingTableError(f"{db_path}: no DuckDB file (run `ebr ingest` first)")
    con = duckdb.connect(str(db_path), read_only=True)
    missing = [t for t in REQUIRED if not _has_table(con, t)]
    if missing:
        con.close()
        raise MissingTableError(
            f"{db_path}: missing required table(s) {', '.join(missing)} (run `ebr ingest`)"
        )
    return con


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    query = "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'"
    return con.execute(query, [name]).fetchone()[0] > 0


def _optional(con: duckdb.DuckDBPyConnection, sql: str, table: str) -> pd.DataFrame | None:
    return con.execute(sql).df() if _has_table(con, table) else None


def split_sessions(db_path: Path, heldout: int, max_fraction: float) -> Split:
    """Hold out the latest `heldout` sessions by ts, clamped (with a warning) to `max_fraction` of all."""
    with connect(db_path) as con:
        ids = con.execute("SELECT session_id FROM sessions ORDER BY ts, session_id").df()["session_id"]
    ids = ids.to_numpy(np.int64)
    cap = int(len(ids) * max_fraction)
    warning = None
    n = heldout
    if heldout > cap:
        n = cap
        warning = (
            f"data.heldout_sessions={heldout} is more than data.heldout_max_fraction={max_fraction} of the "
            f"{len(ids)} sessions: holding out the latest {n} instead"
        )
        log.warning(warning)
    cut = len(ids) - n
    return Split(np.sort(ids[:cut]), np.sort(ids[cut:]), heldout, warning)


def build_features(db_path: Path, cfg: DictConfig, split: Split) -> FeatureSet:
    """Every feature column the towers use, from the log tables in `db_path` (conf/features)."""
    fcfg = cfg.features
    with connect(db_path) as con:
        docs = con.execute(
            "SELECT doc_id, vertical, title, city, region, country, user_id, parent_doc_id, popularity "
            "FROM documents ORDER BY doc_id"
        ).df()
        sessions = con.execute(
            "SELECT session_id, user_id, vertical, query, city, region, country, language "
            "FROM sessions ORDER BY session_id"
        ).df()
        impressions = con.execute("SELECT session_id, doc_id, position, clicked FROM impressions").df()
        users = _optional(con, "SELECT user_id, city, region, country, language FROM users", "users")
        friendships = _optional(con, "SELECT user_id, friend_id FROM friendships", "friendships")
        memberships = _optional(con, "SELECT user_id, doc_id FROM memberships", "memberships")

    session_ids = sessions["session_id"].to_numpy(np.int64)
    heldout = np.isin(session_ids, split.heldout_session_ids)
    train_sessions = sessions[~heldout]
    signals = {
        "users": users is not None and len(users) > 0,
        "friendships": friendships is not None and len(friendships) > 0,
        "memberships": memberships is not None and len(memberships) > 0,
    }
    users = users if users is not None else pd.DataFrame(columns=["user_id", *CONTEXT])

    vocab_min = int(fcfg.vocab.min_count)
    vocabs = {
        name: Vocab.build(
            [users[name], train_sessions[name]] + ([docs[name]] if name in docs else []), vocab_min
        )
        for name in CONTEXT
    }

    # users: every id known from the users table or the friendship graph
    edges = friendships.to_numpy(np.int64) if signals["friendships"] else np.zeros((0, 2), np.int64)
    user_ids = np.unique(np.r_[users["user_id"].to_numpy(np.int64), edges.ravel()])
    graph = build_graph(user_ids, edges)
    social_cfg = fcfg.social
    if signals["friendships"]:
        social = learn_social(graph, social_cfg)
        vectors, clusters, n_clusters = social.vectors, social.clusters, social.n_clusters
        user_clusters = user_cluster_bags(graph, clusters, float(social_cfg.self_weight))
    else:
        vectors = np.zeros((len(user_ids), int(social_cfg.dim)), np.float32)
        clusters, n_clusters = np.zeros(len(user_ids), np.int64), 1
        user_clusters = Bags.empty(len(user_ids))
    users = users.drop_duplicates("user_id")
    home = pd.Series(users["city"].to_numpy(), index=users["user_id"].to_numpy(np.int64))
    home_city = vocabs["city"].lookup(home.reindex(user_ids).to_numpy())
    lookup = UserLookup(user_ids, home_city, vectors, user_clusters)
    hasher = TextHasher(int(fcfg.text.trigram_buckets), int(fcfg.text.word_buckets), int(fcfg.text.hash_seed))
    featurizer = QueryFeaturizer(hasher, vocabs, lookup, n_clusters)

    session_user = sessions["user_id"].fillna(-1).to_numpy(np.int64)
    session_fields = featurizer.featurize(
        sessions["query"].tolist(), session_user, {name: sessions[name].tolist() for name in CONTEXT}
    )
    doc_fields = _document_fields(docs, memberships, featurizer, vectors, clusters)

    imp = _impression_rows(impressions, session_ids, docs["doc_id"].to_numpy(np.int64))
    sizes = {
        "text_trigrams": hasher.trigram_buckets,
        "text_words": hasher.word_buckets,
        "host_trigrams": hasher.trigram_buckets,
        **{name: len(v) for name, v in vocabs.items()},
        "home_city": len(vocabs["city"]),
        "member_cities": len(vocabs["city"]),
        "vertical": len(VERTICALS) + 1,
        "social": vectors.shape[1],
        "social_clusters": n_clusters,
        "popularity": 1,
    }
    stats = {
        "documents": len(docs),
        "sessions": len(sessions),
        "users": len(user_ids),
        "friendships": len(edges),
        "memberships": 0 if memberships is None else len(memberships),
        "impressions_dropped_unknown": int(imp.attrs["dropped"]),
        "vocab_sizes": {name: len(v) for name, v in vocabs.items()},
        "social_clusters": n_clusters,
    }
    return FeatureSet(
        featurizer=featurizer,
        doc_ids=docs["doc_id"].to_numpy(np.int64),
        doc_vertical=_vertical_codes(docs["vertical"]),
        doc_titles=docs["title"].fillna("").to_numpy(object),
        doc_fields=doc_fields,
        session_ids=session_ids,
        session_vertical=_vertical_codes(sessions["vertical"]),
        session_queries=sessions["query"].fillna("").to_numpy(object),
        session_fields=session_fields,
        heldout=heldout,
        impressions=imp,
        signals=signals,
        split=split,
        sizes=sizes,
        stats=stats,
    )


def _vertical_codes(values: pd.Series) -> np.ndarray:
    index = {v: i for i, v in enumerate(VERTICALS)}
    return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def _document_fields(
    docs: pd.DataFrame,
    memberships: pd.DataFrame | None,
    featurizer: QueryFeaturizer,
    vectors: np.ndarray,
    clusters: np.ndarray,
) -> Fields:
    """Document columns. People: the person's own lookups; groups: members; events: attendees plus the host
    group's members (their locations as a weighted multi-hot, their mean social vector, their clusters)."""
    n = len(docs)
    doc_ids = docs["doc_id"].to_numpy(np.int64)
    vocabs, users = featurizer.vocabs, featurizer.users
    trigrams, words = featurizer.hasher.encode(docs["title"].tolist())
    parent_rows = lookup_rows(doc_ids, docs["parent_doc_id"].fillna(-1).to_numpy(np.int64))
    host_titles = [docs["title"].iat[r] if r >= 0 else "" for r in parent_rows]
    host_trigrams, _ = featurizer.hasher.encode(host_titles)

    person_rows = users.rows(docs["user_id"].fillna(-1).to_numpy(np.int64))
    fields: Fields = {"text_trigrams": trigrams, "text_words": words, "host_trigrams": host_trigrams}
    fields["vertical"] = _vertical_codes(docs["vertical"]) + 1
    for name in ("city", "region", "country"):
        fields[name] = vocabs[name].lookup(docs[name])
    # people without an explicit city: the person's home city
    fallback = (fields["city"] == 0) & (person_rows >= 0)
    fields["city"][fallback] = users.home_city[person_rows[fallback]]

    # (document row, user row) pairs: the person itself, members/attendees, and for events the host's members
    owner = [np.flatnonzero(person_rows >= 0)]
    member = [person_rows[person_rows >= 0]]
    if memberships is not None and len(memberships):
        m_doc = lookup_rows(doc_ids, memberships["doc_id"].to_numpy(np.int64))
        m_user = users.rows(memberships["user_id"].to_numpy(np.int64))
        ok = (m_doc >= 0) & (m_user >= 0)
        owner.append(m_doc[ok])
        member.append(m_user[ok])
        # events inherit the members of their host group
        by_group = pd.DataFrame({"group": m_doc[ok], "user": m_user[ok]})
        hosted = pd.DataFrame(
            {"event": np.flatnonzero(parent_rows >= 0), "group": parent_rows[parent_rows >= 0]}
        )
        inherited = hosted.merge(by_group, on="group")
        owner.append(inherited["event"].to_numpy(np.int64))
        member.append(inherited["user"].to_numpy(np.int64))
    owner_rows, member_rows = np.concatenate(owner), np.concatenate(member)

    fields["social"], member_clusters = member_aggregates(vectors, clusters, owner_rows, member_rows, n)
    # a person's cluster bag is the user's own (own cluster plus friends'), as on the query side
    people = person_rows >= 0
    person_bags = users.social_clusters.take(person_rows[people])
    fields["social_clusters"] = _select_bags(people, person_bags, member_clusters)
    counts = np.bincount(owner_rows, minlength=n).astype(np.float32)
    fields["member_cities"] = merge_duplicates(
        Bags.from_groups(n, owner_rows, users.home_city[member_rows], 1.0 / counts[owner_rows])
    )
    popularity = np.log1p(docs["popularity"].fillna(0.0).clip(lower=0.0).to_numpy(np.float64))
    std = popularity.std() or 1.0
    fields["popularity"] = ((popularity - popularity.mean()) / std).astype(np.float32)[:, None]
    return fields


def _select_bags(use_first: np.ndarray, first: Bags, second: Bags) -> Bags:
    """Where use_first[r], the next row of `first` (one row per such r); elsewhere row r of `second`."""
    keep, other = np.flatnonzero(use_first), np.flatnonzero(~use_first)
    rest = second.take(other)
    rows = np.r_[np.repeat(keep, np.diff(first.indptr)), np.repeat(other, np.diff(rest.indptr))]
    return Bags.from_groups(
        len(use_first), rows, np.r_[first.ids, rest.ids], np.r_[first.weights, rest.weights]
    )


def _impression_rows(impressions: pd.DataFrame, session_ids: np.ndarray, doc_ids: np.ndarray) -> pd.DataFrame:
    s = lookup_rows(session_ids, impressions["session_id"].to_numpy(np.int64))
    d = lookup_rows(doc_ids, impressions["doc_id"].to_numpy(np.int64))
    ok = (s >= 0) & (d >= 0)
    out = pd.DataFrame(
        {
            "session_row": s[ok],
            "doc_row": d[ok],
            "position": impressions["position"].to_numpy()[ok].astype(np.int64),
            "clicked": impressions["clicked"].fillna(False).to_numpy(bool)[ok],
        }
    )
    out.attrs["dropped"] = int((~ok).sum())
    return out
