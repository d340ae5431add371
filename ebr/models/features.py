"""Query and document feature tables from the DuckDB log tables, with a train / tune / evaluate split by time.

Nothing computed from held-out (tune or evaluate) sessions enters vocabularies or training examples:
vocabularies use users, documents and training sessions only; text idf uses documents only. The social graph
(friendships, memberships) is not session data.

Verticals are data: the distinct `documents.vertical` values (sorted), or `data.verticals` when configured.
Which document columns are text, location, categorical or numeric is declared per vertical in
`features.fields` (`default` for the verticals not listed): see docs/models.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ebr import home
from ebr.models.fields import Bags, Fields
from ebr.models.pretrained import FrozenEncoder, PretrainedRef, PretrainedText, cached_encode
from ebr.models.query_features import CONTEXT, QueryFeaturizer, UserLookup
from ebr.models.social import (
    build_graph,
    learn_social,
    lookup_rows,
    member_aggregates,
    user_cluster_bags,
)
from ebr.models.text_features import TextFeaturizer, TextHasher, truncate
from ebr.models.vocab import Vocab
from ebr.schema import LOG_TABLES

log = logging.getLogger(__name__)

REQUIRED = tuple(t.name for t in LOG_TABLES if t.required)
PARTS = ("train", "tune", "evaluate")  # session parts, oldest first
ROLES = ("text", "location", "categorical", "numeric")
LOCATION = ("city", "region", "country")


class MissingTableError(RuntimeError):
    pass


@dataclass(frozen=True)
class Split:
    """Sessions ordered by (ts, session_id): the oldest train, the next `tune`, the latest `evaluate`."""

    train_session_ids: np.ndarray
    tune_session_ids: np.ndarray
    evaluate_session_ids: np.ndarray
    requested: dict[str, float]
    warning: str | None = None

    @property
    def heldout_session_ids(self) -> np.ndarray:
        """Tune and evaluate sessions: never training data."""
        return np.sort(np.concatenate([self.tune_session_ids, self.evaluate_session_ids]))

    def summary(self) -> dict[str, object]:
        return {
            "train_sessions": len(self.train_session_ids),
            "tune_sessions": len(self.tune_session_ids),
            "evaluate_sessions": len(self.evaluate_session_ids),
            "requested": self.requested,
            "warning": self.warning,
        }


@dataclass
class FeatureSet:
    """Feature columns of every document and session, the query featuriser (exported with query towers) and
    the impressions, all in row indices: documents in doc_id order, sessions in session_id order."""

    featurizer: QueryFeaturizer
    verticals: tuple[str, ...]  # the verticals present (codes index this tuple)
    doc_ids: np.ndarray
    doc_vertical: np.ndarray  # index into verticals
    doc_texts: np.ndarray  # object array: a document's text fields joined (the BM25 baseline reads it)
    doc_fields: Fields
    session_ids: np.ndarray
    session_vertical: np.ndarray  # index into verticals, -1 for a vertical without documents
    session_queries: np.ndarray
    session_fields: Fields
    session_part: np.ndarray  # int8 per session: index into PARTS
    impressions: pd.DataFrame  # session_row, doc_row, position, clicked
    signals: dict[str, bool]
    split: Split
    sizes: dict[str, int] = field(default_factory=dict)  # embedding-table sizes per field
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def heldout(self) -> np.ndarray:
        """True for tune and evaluate sessions."""
        return self.session_part > 0

    def part_rows(self, part: str) -> np.ndarray:
        """Session rows of one part of the split (train, tune or evaluate)."""
        return np.flatnonzero(self.session_part == PARTS.index(part))

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


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()]


def _optional(con: duckdb.DuckDBPyConnection, sql: str, table: str) -> pd.DataFrame | None:
    return con.execute(sql).df() if _has_table(con, table) else None


def _size(value: float, n: int, key: str) -> int:
    """A part size given as a count (>= 1) or a share of the sessions (0 <= value < 1)."""
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(f"{key} must be a count of sessions or a share in [0, 1), got {value}")
    return int(value) if value >= 1 else math.floor(value * n)


def split_sessions(db_path: Path, tune: float, evaluate: float, max_fraction: float) -> Split:
    """Cut the sessions by (ts, session_id): the latest `evaluate`, before them `tune`, the rest train.

    Sizes are counts or shares of all sessions. When tune + evaluate exceed `max_fraction` of the sessions,
    both are scaled down to that share (with a warning naming the keys)."""
    with connect(db_path) as con:
        ids = con.execute("SELECT session_id FROM sessions ORDER BY ts, session_id").df()["session_id"]
    ids = ids.to_numpy(np.int64)
    n = len(ids)
    n_tune, n_eval = _size(tune, n, "data.split.tune"), _size(evaluate, n, "data.split.evaluate")
    cap = int(n * max_fraction)
    warning = None
    if n_tune + n_eval > cap:
        scale = cap / (n_tune + n_eval)
        wanted = (n_tune, n_eval)
        n_tune, n_eval = math.floor(n_tune * scale), math.floor(n_eval * scale)
        warning = (
            f"data.split.tune={wanted[0]} + data.split.evaluate={wanted[1]} sessions are more than "
            f"data.split.max_heldout_fraction={max_fraction} of the {n} sessions: holding out {n_tune} for "
            f"tuning and {n_eval} for evaluation instead"
        )
        log.warning(warning)
    train_end, tune_end = n - n_tune - n_eval, n - n_eval
    requested = {"tune": tune, "evaluate": evaluate, "max_heldout_fraction": max_fraction}
    return Split(
        np.sort(ids[:train_end]),
        np.sort(ids[train_end:tune_end]),
        np.sort(ids[tune_end:]),
        requested,
        warning,
    )


def split_from_config(db_path: Path, cfg: DictConfig) -> Split:
    s = cfg.data.split
    return split_sessions(db_path, float(s.tune), float(s.evaluate), float(s.max_heldout_fraction))


@dataclass(frozen=True)
class VerticalFields:
    """The document columns of one vertical, by role."""

    text: tuple[str, ...]
    location: tuple[str, ...]  # city, region, country columns, in that order (or none)
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]


def vertical_fields(fields_cfg: Mapping[str, Mapping[str, Sequence[str]]], vertical: str) -> VerticalFields:
    """The declared roles of `vertical` (`features.fields.<vertical>`, else `features.fields.default`)."""
    declared = fields_cfg.get(vertical, fields_cfg.get("default"))
    if declared is None:
        raise ValueError(f"features.fields: no entry for vertical {vertical!r} and no `default`")
    unknown = set(declared) - set(ROLES)
    if unknown:
        raise ValueError(f"features.fields.{vertical}: unknown role(s) {sorted(unknown)} (expected {ROLES})")
    roles = {role: tuple(str(c) for c in declared.get(role) or ()) for role in ROLES}
    if roles["location"] and len(roles["location"]) != len(LOCATION):
        raise ValueError(f"features.fields.{vertical}.location: give the city, region and country columns")
    if not roles["text"]:
        raise ValueError(f"features.fields.{vertical}.text: a vertical needs at least one text column")
    return VerticalFields(**roles)


def build_features(
    db_path: Path, cfg: DictConfig, split: Split, pretrained_uses: set[str] | None = None
) -> FeatureSet:
    """Every feature column the towers use, from the log tables in `db_path` (conf/features).

    `pretrained_uses` ({"frozen", "finetune"} or a subset): what of the pretrained encoder the models read
    (None: what the configured train.models and mining.model read); a frozen use encodes every document and
    query once."""
    fcfg = cfg.features
    fields_cfg = OmegaConf.to_container(fcfg.fields, resolve=True)
    with connect(db_path) as con:
        docs = con.execute("SELECT * FROM documents ORDER BY doc_id").df()
        sessions = con.execute(
            "SELECT session_id, user_id, vertical, query, city, region, country, language "
            "FROM sessions ORDER BY session_id"
        ).df()
        impressions = con.execute("SELECT session_id, doc_id, position, clicked FROM impressions").df()
        users = _optional(con, "SELECT user_id, city, region, country, language FROM users", "users")
        friendships = _optional(con, "SELECT user_id, friend_id FROM friendships", "friendships")
        memberships = _optional(con, "SELECT user_id, doc_id FROM memberships", "memberships")

    verticals = _verticals(cfg, docs)
    roles = {v: vertical_fields(fields_cfg, v) for v in verticals}
    declared = {c for r in roles.values() for c in (*r.text, *r.location, *r.categorical, *r.numeric)}
    missing = sorted(declared - set(docs.columns))
    if missing:
        raise ValueError(f"features.fields: documents have no column(s) {missing} (see ingest.documents)")

    session_ids = sessions["session_id"].to_numpy(np.int64)
    part = np.zeros(len(session_ids), np.int8)
    part[np.isin(session_ids, split.tune_session_ids)] = PARTS.index("tune")
    part[np.isin(session_ids, split.evaluate_session_ids)] = PARTS.index("evaluate")
    train_sessions = sessions[part == 0]
    signals = {
        "users": users is not None and len(users) > 0,
        "friendships": friendships is not None and len(friendships) > 0,
        "memberships": memberships is not None and len(memberships) > 0,
    }
    users = users if users is not None else pd.DataFrame(columns=["user_id", *CONTEXT])

    vocab_min = int(fcfg.vocab.min_count)
    doc_location = _location_columns(docs, roles, verticals)
    vocabs = {
        name: Vocab.build(
            [users[name], train_sessions[name]] + ([doc_location[name]] if name in doc_location else []),
            vocab_min,
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
    cities = pd.Series(users["city"].to_numpy(), index=users["user_id"].to_numpy(np.int64))
    home_city = vocabs["city"].lookup(cities.reindex(user_ids).to_numpy())
    lookup = UserLookup(user_ids, home_city, vectors, user_clusters)

    tcfg = fcfg.text
    hasher = TextHasher(int(tcfg.trigram_buckets), int(tcfg.word_buckets), int(tcfg.hash_seed))
    doc_vertical = _codes(docs["vertical"], verticals)
    texts, truncated = _document_texts(docs, roles, verticals, doc_vertical, int(tcfg.max_chars))
    tokenized = [hasher.tokenize(column) for column in texts]
    text = TextFeaturizer.fit(hasher, str(tcfg.weighting), tokenized)
    doc_texts = np.array([" ".join(t for t in row if t) for row in zip(*texts, strict=True)], dtype=object)
    pretrained = pretrained_uses if pretrained_uses is not None else _pretrained_uses(cfg)
    ref = (
        PretrainedRef.from_dict(OmegaConf.to_container(fcfg.pretrained, resolve=True)) if pretrained else None
    )
    encoder = FrozenEncoder(ref) if ref is not None and "frozen" in pretrained else None
    featurizer = QueryFeaturizer(text, vocabs, lookup, n_clusters, encoder)

    queries, query_cut = truncate(sessions["query"].tolist(), int(tcfg.max_chars))
    session_user = sessions["user_id"].fillna(-1).to_numpy(np.int64)
    session_fields = replace(featurizer, encoder=None).featurize(
        queries, session_user, {name: sessions[name].tolist() for name in CONTEXT}
    )
    doc_fields = _document_fields(
        docs, memberships, featurizer, vectors, clusters, tokenized, doc_location, doc_vertical
    )
    doc_fields["text_raw"] = doc_texts
    extra_sizes = _extra_fields(doc_fields, docs, roles, verticals, doc_vertical)
    if encoder is not None:  # the frozen encoder's embeddings, computed once (and cached on disk)
        cache = home.home() / "cache" / "pretrained"
        session_fields["text_pretrained"] = cached_encode(encoder, list(session_fields["text_raw"]), cache)
        doc_fields["text_pretrained"] = cached_encode(encoder, list(doc_texts), cache)
    if ref is not None:
        dim = encoder.dim if encoder is not None else PretrainedText(ref, trainable=False).dim
        extra_sizes |= {"text_pretrained": dim, "text_raw": dim}

    imp = _impression_rows(impressions, session_ids, docs["doc_id"].to_numpy(np.int64))
    sizes = {
        "text_trigrams": hasher.trigram_buckets,
        "text_words": hasher.word_buckets,
        "host_trigrams": hasher.trigram_buckets,
        **{name: len(v) for name, v in vocabs.items()},
        "home_city": len(vocabs["city"]),
        "member_cities": len(vocabs["city"]),
        "vertical": len(verticals) + 1,
        "social": vectors.shape[1],
        "social_clusters": n_clusters,
        **extra_sizes,
    }
    stats = {
        "documents": len(docs),
        "sessions": len(sessions),
        "verticals": list(verticals),
        "users": len(user_ids),
        "friendships": len(edges),
        "memberships": 0 if memberships is None else len(memberships),
        "anonymous_sessions": int((session_user < 0).sum()),
        "impressions_dropped_unknown": int(imp.attrs["dropped"]),
        "vocab_sizes": {name: len(v) for name, v in vocabs.items()},
        "social_clusters": n_clusters,
        "text_weighting": text.weighting,
        "truncated_texts": {"documents": truncated, "queries": query_cut, "max_chars": int(tcfg.max_chars)},
        "fields": {v: vars(r) for v, r in roles.items()},
    }
    if truncated or query_cut:
        log.warning(
            "%d document text(s) and %d quer(y/ies) longer than features.text.max_chars=%d were cut "
            "for the features",
            truncated,
            query_cut,
            int(tcfg.max_chars),
        )
    return FeatureSet(
        featurizer=featurizer,
        verticals=verticals,
        doc_ids=docs["doc_id"].to_numpy(np.int64),
        doc_vertical=doc_vertical,
        doc_texts=doc_texts,
        doc_fields=doc_fields,
        session_ids=session_ids,
        session_vertical=_codes(sessions["vertical"], verticals),
        session_queries=sessions["query"].fillna("").to_numpy(object),
        session_fields=session_fields,
        session_part=part,
        impressions=imp,
        signals=signals,
        split=split,
        sizes=sizes,
        stats=stats,
    )


def _pretrained_uses(cfg: DictConfig) -> set[str]:
    """The pretrained text encodings (frozen, finetune) the configured models read."""
    names = [*cfg.train.models, *([cfg.mining.model] if cfg.mining.model else [])]
    return {str(cfg.train.variants[n].get("text", "hashed")) for n in names if n in cfg.train.variants} - {
        "hashed"
    }


def _verticals(cfg: DictConfig, docs: pd.DataFrame) -> tuple[str, ...]:
    """`data.verticals` when configured (each must have documents), else the documents' verticals, sorted."""
    present = sorted({str(v) for v in docs["vertical"].dropna().unique()})
    configured = cfg.data.get("verticals")
    if not configured:
        return tuple(present)
    configured = tuple(str(v) for v in configured)
    absent = sorted(set(configured) - set(present))
    if absent:
        raise ValueError(f"data.verticals: no documents of vertical(s) {absent} (present: {present})")
    return configured


def _codes(values: pd.Series, verticals: Sequence[str]) -> np.ndarray:
    index = {v: i for i, v in enumerate(verticals)}
    return np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def _by_vertical(
    docs: pd.DataFrame, columns: Mapping[str, str | None], doc_vertical: np.ndarray, verticals: Sequence[str]
) -> pd.Series:
    """One column assembled per vertical: the column `columns[vertical]` of its documents (None: missing)."""
    out = pd.Series([None] * len(docs), dtype=object)
    for code, vertical in enumerate(verticals):
        column = columns.get(vertical)
        rows = np.flatnonzero(doc_vertical == code)
        if column is not None and len(rows):
            out.iloc[rows] = docs[column].iloc[rows].to_numpy(object)
    return out


def _document_texts(
    docs: pd.DataFrame,
    roles: Mapping[str, VerticalFields],
    verticals: Sequence[str],
    doc_vertical: np.ndarray,
    max_chars: int,
) -> tuple[list[list[str]], int]:
    """Text slot k of every document (its vertical's k-th text column, "" where it has fewer), cut to
    max_chars; and how many texts were cut."""
    slots = max(len(r.text) for r in roles.values())
    out, cut = [], 0
    for k in range(slots):
        columns = {v: (r.text[k] if k < len(r.text) else None) for v, r in roles.items()}
        values = _by_vertical(docs, columns, doc_vertical, verticals)
        texts, n = truncate([v if isinstance(v, str) else "" for v in values], max_chars)
        out.append(texts)
        cut += n
    return out, cut


def _location_columns(
    docs: pd.DataFrame, roles: Mapping[str, VerticalFields], verticals: Sequence[str]
) -> dict[str, pd.Series]:
    """The documents' city, region and country by their verticals' declared location columns."""
    doc_vertical = _codes(docs["vertical"], verticals)
    return {
        name: _by_vertical(
            docs,
            {v: (r.location[i] if r.location else None) for v, r in roles.items()},
            doc_vertical,
            verticals,
        )
        for i, name in enumerate(LOCATION)
    }


def _document_fields(
    docs: pd.DataFrame,
    memberships: pd.DataFrame | None,
    featurizer: QueryFeaturizer,
    vectors: np.ndarray,
    clusters: np.ndarray,
    tokenized: Sequence[tuple[list[list[int]], list[list[int]]]],
    location: Mapping[str, pd.Series],
    doc_vertical: np.ndarray,
) -> Fields:
    """Document columns. Text: the vertical's text columns pooled apart. People: the person's own lookups;
    groups: members; events: attendees plus the host group's members (their locations as a weighted
    multi-hot, their mean social vector, their clusters)."""
    n = len(docs)
    doc_ids = docs["doc_id"].to_numpy(np.int64)
    vocabs, users = featurizer.vocabs, featurizer.users
    trigrams, words = featurizer.text.bags(tokenized)
    parents = docs["parent_doc_id"] if "parent_doc_id" in docs else pd.Series([None] * n)
    parent_rows = lookup_rows(doc_ids, parents.fillna(-1).to_numpy(np.int64))
    host_titles = [docs["title"].iat[r] if r >= 0 else "" for r in parent_rows]
    host_trigrams, _ = featurizer.text.encode(host_titles)

    owners = docs["user_id"] if "user_id" in docs else pd.Series([None] * n)
    person_rows = users.rows(owners.fillna(-1).to_numpy(np.int64))
    fields: Fields = {"text_trigrams": trigrams, "text_words": words, "host_trigrams": host_trigrams}
    fields["vertical"] = doc_vertical + 1
    for name in LOCATION:
        fields[name] = vocabs[name].lookup(location[name])
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
    fields["member_cities"] = Bags.from_groups(
        n, owner_rows, users.home_city[member_rows], 1.0 / counts[owner_rows]
    ).merged()
    return fields


def extra_field_name(role: str, column: str) -> str:
    """The feature name of a declared categorical or numeric document column."""
    return f"{'cat' if role == 'categorical' else 'num'}_{column}"


def _extra_fields(
    fields: Fields,
    docs: pd.DataFrame,
    roles: Mapping[str, VerticalFields],
    verticals: Sequence[str],
    doc_vertical: np.ndarray,
) -> dict[str, int]:
    """Add the declared categorical columns (one vocabulary each over the documents, 0 = OOV and the
    verticals that do not declare it) and numeric columns (sign(x) log1p|x|, standardised, 0 where missing);
    returns their table sizes."""
    sizes = {}
    for role in ("categorical", "numeric"):
        for column in sorted({c for r in roles.values() for c in getattr(r, role)}):
            used = {v: column if column in getattr(r, role) else None for v, r in roles.items()}
            values = _by_vertical(docs, used, doc_vertical, verticals)
            name = extra_field_name(role, column)
            if role == "categorical":
                vocab = Vocab.build([values])
                fields[name] = vocab.lookup(values)
                sizes[name] = len(vocab)
                continue
            x = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
            x = np.sign(x) * np.log1p(np.abs(x))
            known = np.isfinite(x)
            mean = x[known].mean() if known.any() else 0.0
            std = (x[known].std() if known.any() else 0.0) or 1.0
            fields[name] = np.where(known, (x - mean) / std, 0.0).astype(np.float32)[:, None]
            sizes[name] = 1
    return sizes


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
