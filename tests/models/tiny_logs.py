"""The models tests' tiny log: a hand-built, deterministic social-search log written to a real DuckDB file.

Six friend communities in three cities; people share first names and surnames across communities (several
"john smith"s), so the clicked person is identifiable only with the searcher's social circle. Searchers look
for friends, their community's groups and events; queries are full, partial (first name) or misspelled. The
logged incumbent is exact term matching ranked by popularity; a session clicks its target when it was shown.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ebr.schema import TABLES

CITIES = [("seattle", "wa", "us", "en"), ("louisville", "ky", "us", "en"), ("paris", "idf", "fr", "fr")]
FIRST = ["john", "mary", "ahmed", "li", "sofia", "pierre", "anna", "omar", "kasie", "luis"]
LAST = ["smith", "garcia", "chen", "dubois", "okafor", "novak"]
TOPICS = ["hiking", "chess", "cooking", "jazz", "cycling", "gardening", "poetry", "soccer", "yoga"]


def _misspell(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 2))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def tiny_tables(seed: int = 0, n_users: int = 180, n_sessions: int = 2400) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    community = np.arange(n_users) % 6
    city = community // 2
    names = [f"{FIRST[rng.integers(len(FIRST))]} {LAST[rng.integers(len(LAST))]}" for _ in range(n_users)]
    users = pd.DataFrame(
        {
            "user_id": np.arange(n_users, dtype=np.int64) + 1,
            "name": names,
            "city": [CITIES[c][0] for c in city],
            "region": [CITIES[c][1] for c in city],
            "country": [CITIES[c][2] for c in city],
            "language": [CITIES[c][3] for c in city],
            "is_active": True,
        }
    )
    pairs = [
        (a + 1, b + 1)
        for a in range(n_users)
        for b in range(a + 1, n_users)
        if rng.random() < (0.35 if community[a] == community[b] else 0.004)
    ]
    friendships = pd.DataFrame(pairs, columns=["user_id", "friend_id"])
    friends: dict[int, list[int]] = {u: [] for u in users["user_id"]}
    for a, b in pairs:
        friends[a].append(b)
        friends[b].append(a)

    created = datetime(2024, 1, 1)
    docs = []
    for u in range(n_users):
        docs.append((10_000 + u + 1, "people", names[u], *CITIES[city[u]][:3], u + 1, None, None))
    groups = []  # (doc_id, community, topic)
    for c in range(6):
        for t in rng.choice(len(TOPICS), size=3, replace=False):
            doc_id = 20_000 + len(groups)
            groups.append((doc_id, c, TOPICS[t]))
            title = f"{CITIES[c // 2][0]} {TOPICS[t]} club"
            docs.append((doc_id, "groups", title, *CITIES[c // 2][:3], None, None, None))
    events = []  # (doc_id, community, topic)
    for g_id, c, topic in groups[::2]:
        doc_id = 30_000 + len(events)
        events.append((doc_id, c, topic))
        docs.append((doc_id, "events", f"{topic} night", *CITIES[c // 2][:3], None, g_id, created))
    documents = pd.DataFrame(
        docs,
        columns=[
            "doc_id",
            "vertical",
            "title",
            "city",
            "region",
            "country",
            "user_id",
            "parent_doc_id",
            "event_time",
        ],
    )
    documents["created_at"] = created
    documents["popularity"] = rng.gamma(2.0, 10.0, len(documents))
    memberships = pd.DataFrame(
        [(u + 1, g_id) for g_id, c, _ in groups for u in np.flatnonzero(community == c) if rng.random() < 0.5]
        + [
            (u + 1, e_id)
            for e_id, c, _ in events
            for u in np.flatnonzero(community == c)
            if rng.random() < 0.3
        ],
        columns=["user_id", "doc_id"],
    )

    words = {int(d): set(t.split()) for d, t in zip(documents["doc_id"], documents["title"], strict=True)}
    popularity = dict(zip(documents["doc_id"], documents["popularity"], strict=True))
    by_vertical = {
        v: documents.loc[documents["vertical"] == v, "doc_id"].tolist()
        for v in ("people", "groups", "events")
    }
    sessions, impressions, intents = [], [], []
    for s in range(n_sessions):
        user = int(rng.integers(1, n_users + 1))
        c = community[user - 1]
        vertical = rng.choice(["people", "groups", "events"], p=[0.6, 0.25, 0.15])
        if vertical == "people":
            pool = friends[user] or [int(rng.integers(1, n_users + 1))]
            target = 10_000 + int(rng.choice(pool))
        elif vertical == "groups":
            target = int(rng.choice([g for g, gc, _ in groups if gc == c]))
        else:
            target = int(rng.choice([e for e, ec, _ in events if ec == c]))
        title = documents.loc[documents["doc_id"] == target, "title"].iat[0]
        form = rng.choice(["full", "partial", "misspelled"], p=[0.5, 0.3, 0.2])
        tokens = title.split()
        if form == "partial":
            tokens = tokens[:1] if vertical == "people" else [w for w in tokens if w in TOPICS]
        elif form == "misspelled":
            tokens = [_misspell(w, rng) for w in tokens]
        query = " ".join(tokens)
        qwords = set(query.split())
        matches = sorted(
            (d for d in by_vertical[vertical] if qwords <= words[d]), key=lambda d: -popularity[d]
        )
        shown = matches[:10]
        sessions.append(
            (s + 1, user, created + timedelta(minutes=s), vertical, query, *CITIES[city[user - 1]])
        )
        kind = {"people": "friend", "groups": "local_group", "events": "local_event"}[vertical]
        intents.append((s + 1, target, kind, form, None))
        for pos, d in enumerate(shown, start=1):
            impressions.append((s + 1, d, pos, d == target))
    return {
        "users": users,
        "friendships": friendships,
        "documents": documents,
        "memberships": memberships,
        "sessions": pd.DataFrame(
            sessions,
            columns=[
                "session_id",
                "user_id",
                "ts",
                "vertical",
                "query",
                "city",
                "region",
                "country",
                "language",
            ],
        ),
        "impressions": pd.DataFrame(impressions, columns=["session_id", "doc_id", "position", "clicked"]),
        "intents": pd.DataFrame(intents, columns=TABLES["intents"].column_names),
    }


def write_db(tables: dict[str, pd.DataFrame], db_path: Path) -> Path:
    """Create the log tables of ebr/schema.py in a DuckDB file and load `tables` into them (not intents)."""
    with duckdb.connect(str(db_path)) as con:
        for name, df in tables.items():
            if name == "intents":
                continue
            table = TABLES[name]
            cols = ", ".join(f"{c.name} {c.sql_type}" for c in table.columns)
            con.execute(f"CREATE TABLE {name} ({cols})")
            frame = df.reindex(columns=table.column_names)  # noqa: F841 (read by DuckDB's replacement scan)
            con.execute(f"INSERT INTO {name} SELECT * FROM frame")
    return db_path


# small tables and short training: the whole models suite stays well under a minute
FAST = [
    "features.text.trigram_buckets=4096",
    "features.text.word_buckets=4096",
    "features.social.dim=16",
    "features.social.clusters=8",
    "model.embedding_dim=16",
    "model.hidden_dims=[32]",
    "model.output_dim=16",
    "model.groups.text.dim=8",
    "model.groups.location.dim=2",
    "model.groups.social.dim=4",
    "train.epochs=6",
    "train.min_steps=1",
    "train.batch_size=64",
    "train.trainer.enable_progress_bar=false",
    "data.split.tune=200",
    "data.split.evaluate=200",
]
