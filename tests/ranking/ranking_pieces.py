"""A tiny version with known texts, places, people, friendships and memberships for the ranking tests:
60 documents (people, groups, events), one 8-d embedding key `unified`, templates that match every document
of a vertical (radius 2), a DuckDB with the log tables the context features read, and logged requests whose
clicks follow a known rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ebr.ann.quantize import build_index, set_nprobe
from ebr.models.ensembles import l2_normalize
from ebr.registry.publication import VersionPieces, stage_version
from ebr.retrieval.build import build_engine
from ebr.retrieval.retrievers import single
from ebr.retrieval.service import SearchRequest
from ebr.retrieval.terms import document_terms

DATASET = "test"
D = 8
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
LAST = ["smith", "jones", "brown"]
PLACES = [("Paris", "IDF", "FR"), ("Oslo", "Viken", "NO"), ("Lyon", None, "FR")]
TEMPLATE = "(and (term vertical:{v}) (or $text (nn unified :radius 2.0 :nprobe 4)))"


@dataclass
class TinyWorld:
    documents: pd.DataFrame  # doc_id, vertical, title, city, region, country, popularity, user_id
    embeddings: np.ndarray  # (documents, D), unit rows in documents' order
    friendships: list[tuple[int, int]]
    memberships: list[tuple[int, int]]
    users: list[int]


def make_world(seed: int = 3) -> TinyWorld:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(30):  # people 101..130 are users 1..30
        city, region, country = PLACES[i % 3]
        title = f"{FIRST[i % 10]} {LAST[i % 3]}"
        rows.append((101 + i, "people", title, city, region, country, float(i % 7), i + 1))
    for i in range(15):
        city, region, country = PLACES[(i + 1) % 3] if i % 4 else (None, None, None)
        title = f"{LAST[i % 3]} {FIRST[(i * 3) % 10]} club" + (" club" if i % 5 == 0 else "")
        rows.append((201 + i, "groups", title, city, region, country, None if i == 2 else 10.0 * i, None))
    for i in range(15):
        city, region, country = PLACES[i % 3]
        rows.append((301 + i, "events", f"{FIRST[i % 10]} party", city, region, country, float(i), None))
    columns = ["doc_id", "vertical", "title", "city", "region", "country", "popularity", "user_id"]
    documents = pd.DataFrame(rows, columns=columns)
    embeddings = l2_normalize(rng.standard_normal((len(documents), D)).astype(np.float32))
    friendships = sorted({(a, b) for a in range(1, 31) for b in range(a + 1, 31) if (a * 7 + b * 3) % 5 == 0})
    memberships = sorted(
        {(u, 201 + (u * 5) % 15) for u in range(1, 31)} | {(u, 301 + u % 15) for u in range(1, 31, 2)}
    )
    return TinyWorld(documents, embeddings, friendships, memberships, list(range(1, 32)))  # user 31: no doc


def stage(world: TinyWorld, folder: Path) -> Path:
    """Stage the world's version into `folder` (a candidate, not yet published); its tower is a
    placeholder: requests carry their query embedding."""
    tower = folder.parent / f"{folder.name}-tower"
    tower.mkdir(parents=True, exist_ok=True)
    (tower / "config.json").write_text('{"kind": "placeholder"}')
    terms, payloads = [], []
    for r in world.documents.itertuples():
        found = document_terms(r.vertical, r.title, text(r.city), text(r.region), text(r.country))
        terms.append([t if isinstance(t, str) else t[0] for t in found])
        payloads.append([None if isinstance(t, str) else float(t[1]) for t in found])
    documents = world.documents[["doc_id", "vertical", "title"]].assign(terms=terms, payloads=payloads)
    index = build_index("IVF4,PQ2x4", world.embeddings, "inner_product")
    set_nprobe(index, 4)
    verticals = ["people", "groups", "events"]
    pieces = VersionPieces(
        doc_ids=world.documents["doc_id"].to_numpy(np.int64),
        documents=documents,
        embeddings={"unified": world.embeddings},
        indexes={"unified": index},
        towers={"unified": tower},
        retrievers={"unified": single("unified").to_dict()},
        serving={
            "default_vertical": "people",
            "verticals": {
                v: {"retriever": "unified", "key": "unified", "expr": TEMPLATE.format(v=v)} for v in verticals
            },
        },
        build_engine=build_engine,
        index_points={"unified": {"factory": "IVF4,PQ2x4", "nprobe": 4}},
    )
    stage_version(pieces, folder, {}, {}, "run-rank", {})
    return folder


def text(value: object) -> str | None:
    """A table cell as text (None: missing; pandas shows a missing cell as NaN)."""
    return value if isinstance(value, str) else None


def write_db(world: TinyWorld, path: Path) -> Path:
    """A DuckDB with the documents, users, friendships and memberships tables the context reads."""
    with duckdb.connect(str(path)) as con:
        con.register("_docs", world.documents)
        con.execute("CREATE TABLE documents AS SELECT * FROM _docs")
        con.register("_users", pd.DataFrame({"user_id": world.users}))
        con.execute("CREATE TABLE users AS SELECT * FROM _users")
        con.register("_f", pd.DataFrame(world.friendships, columns=["user_id", "friend_id"]))
        con.execute("CREATE TABLE friendships AS SELECT * FROM _f")
        con.register("_m", pd.DataFrame(world.memberships, columns=["user_id", "doc_id"]))
        con.execute("CREATE TABLE memberships AS SELECT * FROM _m")
    return path


def requests(world: TinyWorld, n: int, seed: int) -> tuple[list[SearchRequest], list[np.ndarray]]:
    """Logged requests and their clicks: a searcher types part of a title and clicks the document of that
    title nearest their own city (the rule a ranker with context features can learn)."""
    rng = np.random.default_rng(seed)
    docs = world.documents
    out, clicks = [], []
    for _ in range(n):
        row = docs.iloc[int(rng.integers(len(docs)))]
        city, region, country = PLACES[int(rng.integers(3))]
        words = str(row.title).split()
        text = words[0] if rng.random() < 0.5 else str(row.title)
        query = world.embeddings[int(row.name)] + 0.3 * rng.standard_normal(D).astype(np.float32)
        out.append(
            SearchRequest(
                vertical=str(row.vertical),
                query_text=text,
                searcher_id=int(rng.integers(1, 32)),
                context={"city": city, "region": region, "country": country, "language": "en"},
                vector=l2_normalize(query[None, :])[0].tolist(),
            )
        )
        clicks.append(np.array([int(row.doc_id)], dtype=np.int64))
    return out, clicks
