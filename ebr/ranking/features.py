"""The ranking features of retrieved candidates (the paper's §5): term match, searcher-document context and
the embedding similarity of query and document, one row per hit, computed per batch.

Columns, in order (`feature_names(variant, width)`):
    term match   bm25            BM25 of the query text against the document's `text:` terms (the engine's
                                 own scorer, ebr/retrieval/scoring.py)
                 matched_share   share of the query's distinct tokens the document holds
                 title_exact     the document's title has exactly the query's tokens, in order
                 engine_score    the engine's score of the hit (NaN: none), engine_rank its 0-based position
    context      same_city, same_region, same_country   the request's context equals the document's
                 log_popularity  ln(1 + the document's popularity)
                 is_friend       the document is a person who is the searcher's friend; is_self: the searcher
                 is_member       the searcher is a member of the group / event
                 friends_linked  the searcher's friends who are members of the document, or its friends
    embedding    by `variant`: none; cosine (`emb_cosine`: query . document); hadamard (`emb_h<i>`: their
                 elementwise product); raw (`emb_q<i>`, `emb_d<i>`: both embeddings)

The embedding of a request is that of its vertical's served key (the key the version's calibration chose, or
the first (nn) key of an explicit expression): the query's from `Retrieved.vectors`, the document's from the
version's `embeddings/<key>.npy` (memory-mapped). hadamard and raw columns are as wide as the widest key of
the version (`embedding_width`), a narrower key's extra columns NaN. Missing values are NaN: no searcher, no
context, a document added since the version (no embedding, no context row), a request whose (nn) part the
query policy dropped (no query embedding), or no `RankingContext`.

`RankingContext` is the per-version look-up data of the context features, read once from the dataset's
DuckDB (`from_db`) and kept in a stage folder (`save`, `load`): sorted id arrays and pair keys, looked up
with `searchsorted`, never a query x document matrix.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ebr.retrieval.query import vector_nodes
from ebr.retrieval.scoring import bm25_scores
from ebr.retrieval.stages import Retrieved
from ebr.retrieval.terms import query_terms, tokens

if TYPE_CHECKING:
    from ebr.retrieval.service import SearchService

VARIANTS = ("none", "cosine", "hadamard", "raw")  # how the embedding similarity enters (paper §5)
TERM_FEATURES = ("bm25", "matched_share", "title_exact", "engine_score", "engine_rank")
CONTEXT_FEATURES = (
    "same_city",
    "same_region",
    "same_country",
    "log_popularity",
    "is_friend",
    "is_self",
    "is_member",
    "friends_linked",
)
CONTEXT_FILE = "context.npz"
PLACE_LEVELS = ("city", "region", "country")


@dataclass
class Features:
    matrix: np.ndarray  # float32, one row per hit, the batch's hits concatenated in order
    names: list[str]  # one per column
    groups: np.ndarray  # int64, hits per request (LightGBM's group sizes)


def feature_names(variant: str, width: int) -> list[str]:
    """The columns of `variant` for embeddings at most `width` wide."""
    check_variant(variant)
    embedding = {
        "none": [],
        "cosine": ["emb_cosine"],
        "hadamard": [f"emb_h{i}" for i in range(width)],
        "raw": [f"emb_q{i}" for i in range(width)] + [f"emb_d{i}" for i in range(width)],
    }[variant]
    return [*TERM_FEATURES, *CONTEXT_FEATURES, *embedding]


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"ranking variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def text_key(text: str | None) -> int:
    """A stable int64 of a text's token sequence (0: no tokens): equal for texts with the same tokens."""
    words = tokens(text or "")
    if not words:
        return 0
    digest = hashlib.blake2b(" ".join(words).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


@dataclass
class RankingContext:
    """Per-document and per-user look-up arrays of the context features (one dataset's logs)."""

    doc_ids: np.ndarray  # int64, sorted
    places: np.ndarray  # int64 (documents, 3): city, region, country codes (-1: none)
    popularity: np.ndarray  # float64 per document (NaN: none)
    doc_user: np.ndarray  # int64 per document: the rank in `users` of the person it is (-1: none)
    title_key: np.ndarray  # int64 per document: text_key(title)
    users: np.ndarray  # int64, sorted: every user id the tables name
    friend_keys: np.ndarray  # int64, sorted: rank(a) * len(users) + rank(b), both directions
    friend_offsets: np.ndarray  # int64 (len(users) + 1): CSR of each user's friend ranks
    friend_ranks: np.ndarray  # int64
    member_keys: np.ndarray  # int64, sorted: rank(user) * len(doc_ids) + row(doc)
    place_names: list[str]  # code -> "<level>:<name>"

    @classmethod
    def from_db(cls, db_path: Path) -> RankingContext:
        """Read the documents, users, friendships and memberships of a dataset's DuckDB (the optional
        tables may be absent: their features are then 0 or NaN)."""
        import duckdb  # building the look-ups only: serving loads them from context.npz

        with duckdb.connect(str(db_path), read_only=True) as con:
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
            }
            docs = con.execute(
                "SELECT doc_id, city, region, country, popularity, user_id, title "
                "FROM documents ORDER BY doc_id"
            ).fetchall()
            friends = (
                con.execute("SELECT user_id, friend_id FROM friendships").fetchnumpy()
                if "friendships" in tables
                else {"user_id": np.zeros(0, np.int64), "friend_id": np.zeros(0, np.int64)}
            )
            members = (
                con.execute("SELECT user_id, doc_id FROM memberships").fetchnumpy()
                if "memberships" in tables
                else {"user_id": np.zeros(0, np.int64), "doc_id": np.zeros(0, np.int64)}
            )
            user_ids = (
                con.execute("SELECT user_id FROM users").fetchnumpy()["user_id"]
                if "users" in tables
                else np.zeros(0, np.int64)
            )
        doc_ids = np.array([r[0] for r in docs], dtype=np.int64)
        names: dict[str, int] = {}
        places = np.array(
            [[_code(names, level, r[1 + i]) for i, level in enumerate(PLACE_LEVELS)] for r in docs],
            dtype=np.int64,
        ).reshape(len(docs), 3)
        popularity = np.array([np.nan if r[4] is None else float(r[4]) for r in docs], dtype=np.float64)
        doc_user_ids = np.array([-1 if r[5] is None else int(r[5]) for r in docs], dtype=np.int64)
        title_key = np.array([text_key(r[6]) for r in docs], dtype=np.int64)
        a = np.asarray(friends["user_id"], dtype=np.int64)
        b = np.asarray(friends["friend_id"], dtype=np.int64)
        m_user = np.asarray(members["user_id"], dtype=np.int64)
        m_doc = np.asarray(members["doc_id"], dtype=np.int64)
        people = doc_user_ids[doc_user_ids >= 0]
        users = np.unique(np.concatenate([np.asarray(user_ids, np.int64), a, b, m_user, people]))
        n_users = len(users)
        ra, rb = _ranks(users, np.concatenate([a, b])), _ranks(users, np.concatenate([b, a]))
        pairs = np.unique(ra * n_users + rb)
        sources = pairs // max(n_users, 1)
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(sources, minlength=n_users), out=offsets[1:])
        rows = _rows(doc_ids, m_doc)
        known = rows >= 0
        member_keys = np.unique(_ranks(users, m_user[known]) * len(doc_ids) + rows[known])
        doc_user = np.where(doc_user_ids >= 0, _ranks(users, np.maximum(doc_user_ids, 0)), -1)
        return cls(
            doc_ids,
            places,
            popularity,
            doc_user.astype(np.int64),
            title_key,
            users,
            pairs.astype(np.int64),
            offsets,
            (pairs % max(n_users, 1)).astype(np.int64),
            member_keys.astype(np.int64),
            sorted(names, key=names.__getitem__),
        )

    def save(self, folder: Path) -> Path:
        """Write `context.npz` into `folder`; returns its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONTEXT_FILE
        arrays = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "place_names"}
        with path.open("wb") as f:
            np.savez(f, place_names=np.array(json.dumps(self.place_names)), **arrays)
        return path

    @classmethod
    def load(cls, folder: Path) -> RankingContext:
        """Read `context.npz` of `folder` (ValueError naming the file if it is not one)."""
        path = folder / CONTEXT_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                values = {k: data[k] for k in data.files}
            names = json.loads(str(values.pop("place_names")))
            return cls(place_names=names, **values)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a ranking context ({exc})") from exc

    def place_codes(self, context: Mapping[str, str | None]) -> np.ndarray:
        """The codes of a request context's city, region and country (-1: none or unknown)."""
        lookup = self._place_lookup
        return np.array(
            [
                lookup.get(f"{level}:{context.get(level)}", -1) if context.get(level) else -1
                for level in PLACE_LEVELS
            ],
            dtype=np.int64,
        )

    @functools.cached_property
    def _place_lookup(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.place_names)}

    def user_rank(self, user_id: int | None) -> int:
        """The rank of a user in `users`, -1 if unknown or None."""
        if user_id is None:
            return -1
        pos = int(np.searchsorted(self.users, user_id))
        return pos if pos < len(self.users) and self.users[pos] == user_id else -1

    def friends_of(self, rank: int) -> np.ndarray:
        return self.friend_ranks[self.friend_offsets[rank] : self.friend_offsets[rank + 1]]


def candidate_features(
    service: SearchService,
    batch: Sequence[Retrieved],
    variant: str,
    context: RankingContext | None = None,
) -> Features:
    """The feature rows of every hit of `batch`, requests in order (see the module docstring)."""
    check_variant(variant)
    width = embedding_width(service)
    names = feature_names(variant, width)
    groups = np.array([len(r.hits.doc_ids) for r in batch], dtype=np.int64)
    total = int(groups.sum())
    matrix = np.full((total, len(names)), np.nan, dtype=np.float32)
    if total == 0:
        return Features(matrix, names, groups)
    starts = np.concatenate([[0], np.cumsum(groups)[:-1]])
    doc_ids = np.concatenate([np.asarray(r.hits.doc_ids, dtype=np.int64) for r in batch])
    term = len(TERM_FEATURES)
    matrix[:, :term] = _term_features(service, batch, starts, doc_ids)
    if context is not None:
        matrix[:, term : term + len(CONTEXT_FEATURES)] = _context_features(context, batch, starts, doc_ids)
    if variant != "none":
        matrix[:, term + len(CONTEXT_FEATURES) :] = _embedding_features(
            service, batch, starts, doc_ids, variant, width
        )
    return Features(matrix, names, groups)


def _term_features(
    service: SearchService, batch: Sequence[Retrieved], starts: np.ndarray, doc_ids: np.ndarray
) -> np.ndarray:
    index = service.engine.index
    out = np.full((len(doc_ids), len(TERM_FEATURES)), np.nan)
    internal = np.array([_internal(index, int(d)) for d in doc_ids], dtype=np.int64)
    keys = _title_keys(service, doc_ids)
    for start, retrieved in zip(starts.tolist(), batch, strict=True):
        n = len(retrieved.hits.doc_ids)
        rows = slice(start, start + n)
        ids = internal[rows]
        live = ids >= 0
        text = retrieved.request.query_text
        terms = query_terms(text)
        bm25 = np.full(n, np.nan)
        share = np.full(n, np.nan)
        if live.any():
            bm25[live] = bm25_scores(index, ids[live], text, service.config.bm25)
            matched = np.zeros(int(live.sum()))
            for t in terms:
                matched += index.term_frequencies(t, ids[live]) > 0
            share[live] = matched / len(terms) if terms else 0.0
        out[rows, 0] = bm25
        out[rows, 1] = share
        query_key = text_key(text)
        title = keys[rows]
        out[rows, 2] = np.where(
            title == np.iinfo(np.int64).min, np.nan, (title == query_key) & (query_key != 0)
        )
        out[rows, 3] = np.asarray(retrieved.hits.scores, dtype=np.float64)
        out[rows, 4] = np.arange(n)
    return out


def _internal(index: object, doc_id: int) -> int:
    found = index.internal_id(doc_id)  # type: ignore[attr-defined]
    return -1 if found is None else int(found)


def _title_keys(service: SearchService, doc_ids: np.ndarray) -> np.ndarray:
    """text_key of each document's title in the version (int64 min: a document added since)."""
    ids, keys = _version_titles(str(service.version_dir), _file_sha(service, "documents.parquet"))
    rows = _rows(ids, doc_ids)
    return np.where(rows >= 0, keys[np.maximum(rows, 0)] if len(keys) else 0, np.iinfo(np.int64).min)


@functools.lru_cache(maxsize=8)
def _version_titles(version_dir: str, sha: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    path = Path(version_dir) / "documents.parquet"  # ParquetFile: read_table imports pandas (a cold search)
    table = pq.ParquetFile(path).read(columns=["doc_id", "title"]).sort_by("doc_id")
    ids = np.asarray(table["doc_id"].to_pylist(), dtype=np.int64)
    return ids, np.array([text_key(t) for t in table["title"].to_pylist()], dtype=np.int64)


def _context_features(
    context: RankingContext, batch: Sequence[Retrieved], starts: np.ndarray, doc_ids: np.ndarray
) -> np.ndarray:
    out = np.full((len(doc_ids), len(CONTEXT_FEATURES)), np.nan)
    rows = _rows(context.doc_ids, doc_ids)
    known = rows >= 0
    safe = np.maximum(rows, 0)
    n_users, n_docs = len(context.users), len(context.doc_ids)
    for start, retrieved in zip(starts.tolist(), batch, strict=True):
        n = len(retrieved.hits.doc_ids)
        span = slice(start, start + n)
        docs, here = safe[span], known[span]
        asked = context.place_codes(retrieved.request.context or {})
        for j in range(3):
            doc_place = context.places[docs, j] if n_docs else np.full(n, -1)
            same = (doc_place == asked[j]).astype(np.float64)
            out[span, j] = np.where(here & (asked[j] >= 0) & (doc_place >= 0), same, np.nan)
        popularity = context.popularity[docs] if n_docs else np.full(n, np.nan)
        out[span, 3] = np.where(here, np.log1p(np.maximum(popularity, 0)), np.nan)
        searcher = context.user_rank(retrieved.request.searcher_id)
        if searcher < 0:
            continue
        doc_user = np.where(here, context.doc_user[docs], -1) if n_docs else np.full(n, -1)
        person = doc_user >= 0
        out[span, 4] = np.where(
            here, person & _member(context.friend_keys, searcher * n_users + doc_user), np.nan
        )
        out[span, 5] = np.where(here, doc_user == searcher, np.nan)
        out[span, 6] = np.where(here, _member(context.member_keys, searcher * n_docs + docs), np.nan)
        friends = context.friends_of(searcher)
        linked = np.zeros(n)
        if len(friends):
            linked += _member(context.member_keys, friends[:, None] * n_docs + docs[None, :]).sum(axis=0)
            mutual = _member(context.friend_keys, friends[:, None] * n_users + doc_user[None, :])
            linked += (mutual & person[None, :]).sum(axis=0)
        out[span, 7] = np.where(here, linked, np.nan)
    return out


def _embedding_features(
    service: SearchService,
    batch: Sequence[Retrieved],
    starts: np.ndarray,
    doc_ids: np.ndarray,
    variant: str,
    width: int,
) -> np.ndarray:
    columns = 1 if variant == "cosine" else width if variant == "hadamard" else 2 * width
    out = np.full((len(doc_ids), columns), np.nan, dtype=np.float32)
    for start, retrieved in zip(starts.tolist(), batch, strict=True):
        n = len(retrieved.hits.doc_ids)
        key = served_key(service, retrieved)
        query = None if key is None else retrieved.vectors.get(key)
        if n == 0 or query is None:
            continue
        ids, order, matrix = _version_embeddings(
            str(service.version_dir), key, _file_sha(service, f"embeddings/{key}.npy")
        )
        found = _rows(ids, doc_ids[start : start + n])
        have = found >= 0
        if not have.any():
            continue
        docs = np.asarray(matrix[order[found[have]]], dtype=np.float32)
        q = np.asarray(query, dtype=np.float32)
        d = len(q)
        rows = start + np.flatnonzero(have)
        if variant == "cosine":
            out[rows, 0] = docs @ q
        elif variant == "hadamard":
            out[rows, :d] = docs * q[None, :]
        else:
            out[rows, :d] = q[None, :]
            out[rows, width : width + d] = docs
    return out


def served_key(service: SearchService, retrieved: Retrieved) -> str | None:
    """The embedding key of a request: the first (nn) / (rerank) key of an explicit expression, else its
    vertical's served key."""
    if retrieved.request.expr is not None:
        keys = [n.key for n in vector_nodes(retrieved.root)]
        return keys[0] if keys else None
    vertical = retrieved.request.vertical or service.default_vertical
    return (service.serving.get(vertical or "") or {}).get("key")


def embedding_width(service: SearchService) -> int:
    """The widest embedding of the version's served keys (the width of the hadamard and raw columns)."""
    keys = {v.get("key") for v in service.serving.values()} | set(service.engine.index.fields)
    dims = [service.engine.index.fields[k].d for k in keys if k in service.engine.index.fields]
    return max(dims, default=0)


@functools.lru_cache(maxsize=16)
def _version_embeddings(version_dir: str, key: str, sha: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The version's doc ids sorted, their rows in embeddings/<key>.npy, and that matrix memory-mapped."""
    folder = Path(version_dir)
    ids = np.load(folder / "doc_ids.npy")
    order = np.argsort(ids, kind="stable")
    return ids[order], order.astype(np.int64), np.load(folder / "embeddings" / f"{key}.npy", mmap_mode="r")


def _file_sha(service: SearchService, name: str) -> str:
    return str((service.manifest.get("files") or {}).get(name, ""))


def _rows(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The position of each of `wanted` in `sorted_ids`, -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == wanted, pos, -1).astype(np.int64)


def _ranks(users: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.searchsorted(users, ids).astype(np.int64)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of `keys` is in `sorted_keys` (negative keys never are)."""
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return (sorted_keys[pos] == keys) & (keys >= 0)


def _code(names: dict[str, int], level: str, value: str | None) -> int:
    if value is None:
        return -1
    return names.setdefault(f"{level}:{value}", len(names))
