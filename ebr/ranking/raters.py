"""RATER SIMULATION. Simulated raters for the embedded default (a simulated world): they label rating tasks
from the simulator's HIDDEN INTENTS (the world's ground_truth/intents.parquet). This module and evaluation
are the only places that read the intents; nothing here is available with real logs, where labels are
imported instead (`ebr feedback --labels FILE`, docs/feedback.md).

A rater judges a served result as relevant when the document is the intended target of a logged session of
the same vertical whose query has the same tokens (the query-document judgement human raters give), then
errs with probability `error_rate`: the label is flipped when a uniform draw from the sha256 of
(seed, task_id) falls below it, so the same task always gets the same label. A task whose query the logs
never asked cannot be judged by the simulation and stays unrated (counted).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ebr.retrieval.terms import tokens

RATER = "rater-simulation"
INTENTS_FILE = Path("ground_truth") / "intents.parquet"


def query_key(text: str | None) -> str:
    """The form of a query two searches share when they ask the same thing: its tokens, space-joined."""
    return " ".join(tokens(text or ""))


@dataclass
class IntentJudge:
    """RATER SIMULATION: relevant (vertical, query key, doc id) triples from the hidden intents."""

    relevant: frozenset[tuple[str, str, int]]
    asked: frozenset[tuple[str, str]]  # (vertical, query key) the logs asked

    @classmethod
    def from_world(cls, intents_path: Path, db_path: Path) -> IntentJudge:
        """The intents of a simulated world joined to the dataset's ingested sessions (their query text)."""
        if not intents_path.is_file():
            raise FileNotFoundError(
                f"{intents_path}: no intents, so no simulated raters (import labels with --labels FILE)"
            )
        intents = pd.read_parquet(intents_path, columns=["session_id", "target_doc_id"])
        with duckdb.connect(str(db_path), read_only=True) as con:
            sessions = con.execute("SELECT session_id, vertical, query FROM main.sessions").df()
        joined = sessions.merge(intents, on="session_id", how="left")
        keys = [query_key(q) for q in joined["query"]]
        verticals = joined["vertical"].astype(str).tolist()
        relevant = {
            (v, k, int(d))
            for v, k, d in zip(verticals, keys, joined["target_doc_id"], strict=True)
            if not pd.isna(d)
        }
        return cls(frozenset(relevant), frozenset(zip(verticals, keys, strict=True)))

    def judge(self, vertical: str | None, query: str | None, doc_id: int) -> float | None:
        """1.0 relevant, 0.0 not, None: the simulation cannot judge this query."""
        key = (str(vertical), query_key(query))
        if key not in self.asked:
            return None
        return 1.0 if (*key, int(doc_id)) in self.relevant else 0.0


def flip_draw(seed: int, task: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, task id)."""
    digest = hashlib.sha256(f"{seed}\x1f{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def simulate_labels(tasks: pd.DataFrame, judge: IntentJudge, error_rate: float, seed: int) -> pd.DataFrame:
    """RATER SIMULATION: the label of each task the judge can judge (flipped at `error_rate`), as a label
    file's rows (task_id, label, rater, ts)."""
    if not 0 <= error_rate <= 1:
        raise ValueError(f"feedback.raters.error_rate must be in [0, 1], got {error_rate}")
    rows = []
    now = datetime.now(UTC).replace(tzinfo=None).isoformat()
    for task in tasks.itertuples():
        truth = judge.judge(task.vertical, task.query, int(task.doc_id))
        if truth is None:
            continue
        label = 1.0 - truth if flip_draw(seed, task.task_id) < error_rate else truth
        rows.append({"task_id": task.task_id, "label": label, "rater": RATER, "ts": now})
    return pd.DataFrame(rows, columns=["task_id", "label", "rater", "ts"])


def agreement(labels: pd.DataFrame, tasks: pd.DataFrame, judge: IntentJudge) -> float:
    """The share of labels equal to the judge's truth (1 - the realised error rate)."""
    truth = {t.task_id: judge.judge(t.vertical, t.query, int(t.doc_id)) for t in tasks.itertuples()}
    same = [truth[t] == label for t, label in zip(labels["task_id"], labels["label"], strict=True)]
    return float(np.mean(same)) if same else float("nan")
