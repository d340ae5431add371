"""A synthetic text search log with two verticals that are not social ones (jobs, papers): titles and long
bodies, anonymous sessions whose queries are words of the target's title and body, one click per session.
Written in schema version 2 with a declared `body` column."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

VOCAB = [f"w{i:03d}" for i in range(400)]
TOPICS = {"jobs": ["engineer", "nurse", "driver", "chef", "teacher"], "papers": ["protein", "graph", "laser"]}


def write_text_log(folder: Path, n_docs: int = 240, n_sessions: int = 1600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    docs = []
    for i in range(n_docs):
        vertical = "jobs" if i % 2 == 0 else "papers"
        topic = TOPICS[vertical][i % len(TOPICS[vertical])]
        words = rng.choice(VOCAB, size=6, replace=False)
        title = f"{topic} {' '.join(words[:3])}"
        body = " ".join(rng.choice(VOCAB, size=300).tolist() + words[3:].tolist() * 5)
        if i == 1:
            body = (body + " ") * 400  # a body of over 100,000 characters: cut for the features, not refused
        docs.append({"doc_id": 100 + i, "vertical": vertical, "title": title, "body": body, "keys": words})
    sessions, impressions = [], []
    start = datetime(2026, 3, 1)
    for s in range(n_sessions):
        doc = docs[int(rng.integers(n_docs))]
        query = " ".join(rng.choice(doc["keys"], size=2, replace=False))
        ts = start + timedelta(minutes=s)
        sessions.append(
            {"session_id": s + 1, "user_id": None, "ts": ts, "vertical": doc["vertical"], "query": query}
        )
        others = [d for d in docs if d["vertical"] == doc["vertical"] and d is not doc][:2]
        for pos, d in enumerate([doc, *others], 1):
            impressions.append(
                {"session_id": s + 1, "doc_id": d["doc_id"], "position": pos, "clicked": d is doc}
            )
    pd.DataFrame([{k: v for k, v in d.items() if k != "keys"} for d in docs]).to_parquet(
        folder / "documents.parquet"
    )
    frame = pd.DataFrame(sessions).astype({"user_id": "Int64"})
    frame.to_parquet(folder / "sessions.parquet")
    pd.DataFrame(impressions).to_parquet(folder / "impressions.parquet")
    (folder / "schema.json").write_text(json.dumps({"schema_version": 2}))
    return folder
