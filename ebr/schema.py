"""The input contract: the search-log tables a team exports, versioned (docs/log_schema.md).

Ids are 64-bit integers, timestamps are UTC. `documents`, `sessions` and `impressions` are required;
`users`, `friendships` and `memberships` are optional (a text-only search log ingests and trains the
text tower). Documents may carry extra columns declared in `ingest.documents.columns`
(`DOCUMENT_COLUMN_TYPES`). `intents` is simulator ground truth, read only by evaluation, never by training
or mining.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SCHEMA_VERSION = 2  # the current version; a folder without schema.json is read as this one
SCHEMA_VERSIONS = (1, 2)  # the versions a folder's schema.json may name
VERTICALS = ("people", "groups", "events")  # the version-1 verticals (version 2 allows any vertical)
# The kinds of extra document columns (`ingest.documents.columns`) and their DuckDB types.
DOCUMENT_COLUMN_TYPES = {"text": "VARCHAR", "categorical": "VARCHAR", "numeric": "DOUBLE"}


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # DuckDB type
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique key
    required: bool = True

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def with_columns(self, extra: tuple[Column, ...]) -> Table:
        """The table with `extra` columns after its own."""
        return replace(self, columns=self.columns + extra)


def _c(name: str, sql_type: str, nullable: bool = False) -> Column:
    return Column(name, sql_type, nullable)


USERS = Table(
    "users",
    (
        _c("user_id", "BIGINT"),
        _c("name", "VARCHAR"),
        _c("city", "VARCHAR", True),
        _c("region", "VARCHAR", True),
        _c("country", "VARCHAR", True),
        _c("language", "VARCHAR", True),
        _c("is_active", "BOOLEAN"),
    ),
    key=("user_id",),
    required=False,
)
FRIENDSHIPS = Table(
    "friendships",
    (_c("user_id", "BIGINT"), _c("friend_id", "BIGINT")),
    key=("user_id", "friend_id"),
    required=False,
)
DOCUMENTS = Table(
    "documents",
    (
        _c("doc_id", "BIGINT"),
        _c("vertical", "VARCHAR"),
        _c("title", "VARCHAR"),
        _c("city", "VARCHAR", True),
        _c("region", "VARCHAR", True),
        _c("country", "VARCHAR", True),
        _c("user_id", "BIGINT", True),  # people documents: the user it is
        _c("parent_doc_id", "BIGINT", True),  # events: the host group's doc_id
        _c("event_time", "TIMESTAMP", True),  # events: when it takes place
        _c("created_at", "TIMESTAMP", True),
        _c("popularity", "DOUBLE", True),  # a non-negative prior
    ),
    key=("doc_id",),
)
MEMBERSHIPS = Table(
    "memberships",
    (_c("user_id", "BIGINT"), _c("doc_id", "BIGINT")),
    key=("user_id", "doc_id"),
    required=False,
)
SESSIONS = Table(
    "sessions",
    (
        _c("session_id", "BIGINT"),
        _c("user_id", "BIGINT", True),  # the searcher; null: an anonymous search
        _c("ts", "TIMESTAMP"),
        _c("vertical", "VARCHAR"),
        _c("query", "VARCHAR"),
        _c("city", "VARCHAR", True),
        _c("region", "VARCHAR", True),
        _c("country", "VARCHAR", True),
        _c("language", "VARCHAR", True),
    ),
    key=("session_id",),
)
IMPRESSIONS = Table(
    "impressions",
    (
        _c("session_id", "BIGINT"),
        _c("doc_id", "BIGINT"),
        _c("position", "INTEGER"),
        _c("clicked", "BOOLEAN"),
    ),
    key=("session_id", "position"),
)
INTENTS = Table(
    "intents",
    (
        _c("session_id", "BIGINT"),
        _c("target_doc_id", "BIGINT"),
        _c("intent_kind", "VARCHAR"),  # e.g. friend, friend_of_friend, same_city, popular, local_group
        _c("query_form", "VARCHAR"),  # e.g. full, partial, first_name, misspelled, optionalized
        _c("reformulates_session_id", "BIGINT", True),
    ),
    key=("session_id",),
    required=False,
)

LOG_TABLES: tuple[Table, ...] = (USERS, FRIENDSHIPS, DOCUMENTS, MEMBERSHIPS, SESSIONS, IMPRESSIONS)
TABLES: dict[str, Table] = {t.name: t for t in (*LOG_TABLES, INTENTS)}
