"""Recall@K of retrievers on the evaluation sessions (paper §2.1): exact KNN per vertical and the baselines.

recall@K = |top-K ∩ T| / |T| averaged over sessions, T = the clicked documents of a held-out session. Towers
retrieve by exact inner-product search (ebr.ann.knn.exact_knn) over every document of the session's vertical;
the baselines are the incumbent term matching as logged (its impressions in position order) and BM25 on the
documents' text (bm25s). Separately labelled, recall against the simulator's intents (T = the intended
document), also per query form (misspelled, partial, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import bm25s
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ebr.ann.knn import exact_knn
from ebr.models.features import PARTS, FeatureSet
from ebr.models.lightning_module import TwoTowerModule
from ebr.models.text_features import normalize_text
from ebr.models.training import embed_documents, embed_queries
from ebr.runners import SERIAL, Shards

BASELINES = ("incumbent", "bm25")


def evaluation_targets(features: FeatureSet, intents: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """(session_row, doc_row[, query_form]) target tables of the held-out sessions: "clicks", "intents"."""
    targets = {"clicks": _click_targets(features)}
    if intents is not None:
        targets["intents"] = _intent_targets(features, intents)
    return targets


def evaluation_rows(targets: Mapping[str, pd.DataFrame]) -> np.ndarray:
    """The sorted session rows every ranking must cover."""
    return np.unique(np.concatenate([t["session_row"].to_numpy() for t in targets.values()]))


def evaluate(
    cfg: DictConfig,
    features: FeatureSet,
    models: Mapping[str, TwoTowerModule],
    intents: pd.DataFrame | None = None,
    rankings: Mapping[str, np.ndarray] | None = None,
    shards: Shards = SERIAL,
    doc_vectors: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The report dict: recall[model][vertical][K] against clicks and, with intents, against intents (overall
    and per query form), for eval.baselines, the trained towers (`models`, by name) and any precomputed
    `rankings` (document rows, one row per session of `evaluation_rows`, e.g. of an ensemble). `doc_vectors`:
    the document embeddings of some models as their export saved them (else they are computed)."""
    ks = [int(k) for k in cfg.eval.ks]
    depth = max(ks)
    targets = evaluation_targets(features, intents)
    rows = evaluation_rows(targets)
    retrievers: dict[str, np.ndarray] = {}
    for name in cfg.eval.baselines:
        if name == "incumbent":
            retrievers[name] = incumbent_ranking(features, rows, depth)
        elif name == "bm25":
            bm25 = cfg.eval.bm25
            retrievers[name] = bm25_ranking(features, rows, depth, float(bm25.k1), float(bm25.b))
        else:
            raise ValueError(f"eval.baselines: unknown baseline {name!r} (expected {', '.join(BASELINES)})")
    for name, module in models.items():
        given = (doc_vectors or {}).get(name)
        docs = embed_documents(module, features, shards=shards) if given is None else given
        queries = embed_queries(module, features, rows, shards=shards)
        block = int(cfg.eval.query_block)
        retrievers[name] = knn_ranking(docs, queries, features, rows, depth, block, shards)
    retrievers.update(rankings or {})

    report: dict[str, Any] = {"ks": ks, "recall": {}, "sessions": {}}
    for kind, table in targets.items():
        key = "recall" if kind == "clicks" else "recall_intent"
        report[key] = {
            name: recall_by_group(ranked, rows, table, features.session_vertical, ks, features.verticals)
            for name, ranked in retrievers.items()
        }
        report["sessions"][kind] = _session_counts(table, features)
    if "intents" in targets:
        table = targets["intents"]
        report["recall_intent_by_query_form"] = {
            name: recall_by_query_tag(ranked, rows, table, ks) for name, ranked in retrievers.items()
        }
        tags = _query_tags(table)
        report["sessions"]["intents_by_query_form"] = {
            str(k): int(v) for k, v in tags.groupby("tag")["session_row"].nunique().items()
        }
    return report


def _evaluated(features: FeatureSet) -> np.ndarray:
    """True for the sessions the recall table is computed on: the `evaluate` part of the split."""
    return features.session_part == PARTS.index("evaluate")


def _click_targets(features: FeatureSet) -> pd.DataFrame:
    imp = features.impressions
    held = _evaluated(features)[imp["session_row"].to_numpy()] & imp["clicked"].to_numpy()
    return imp.loc[held, ["session_row", "doc_row"]].drop_duplicates().reset_index(drop=True)


def _intent_targets(features: FeatureSet, intents: pd.DataFrame) -> pd.DataFrame:
    s = features.session_rows(intents["session_id"].to_numpy(np.int64))
    d = features.doc_rows(intents["target_doc_id"].to_numpy(np.int64))
    ok = (s >= 0) & (d >= 0)
    ok[ok] &= _evaluated(features)[s[ok]]
    form = intents["query_form"].fillna("unknown").to_numpy(object)
    return pd.DataFrame({"session_row": s[ok], "doc_row": d[ok], "query_form": form[ok]})


def _session_counts(table: pd.DataFrame, features: FeatureSet) -> dict[str, int]:
    verticals = features.session_vertical[table["session_row"].to_numpy()]
    per = {
        v: int(table.loc[verticals == i, "session_row"].nunique()) for i, v in enumerate(features.verticals)
    }
    return {**per, "all": int(table["session_row"].nunique())}


def target_hits(ranked: np.ndarray, rows: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Rank (0-based) of each target of `table` in its session's ranking, len(ranking) where absent.

    ranked: (len(rows), depth) document rows, -1 padded; rows: the session rows of `ranked`, sorted."""
    position = np.searchsorted(rows, table["session_row"].to_numpy())
    lists = ranked[position]
    match = lists == table["doc_row"].to_numpy()[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), ranked.shape[1])


def _recall(table: pd.DataFrame, ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean over sessions of the share of their targets ranked in the top K."""
    out = {}
    for k in ks:
        per_session = pd.Series(ranks < k).groupby(table["session_row"].to_numpy()).mean()
        out[str(k)] = round(float(per_session.mean()), 6) if len(per_session) else float("nan")
    return out


def recall_by_group(
    ranked: np.ndarray,
    rows: np.ndarray,
    table: pd.DataFrame,
    session_vertical: np.ndarray,
    ks: list[int],
    names: tuple[str, ...],
) -> dict[str, dict[str, float]]:
    """recall@K per vertical (`names`: the verticals the codes of `session_vertical` index) and over all
    sessions ("all")."""
    ranks = target_hits(ranked, rows, table)
    verticals = session_vertical[table["session_row"].to_numpy()]
    out = {}
    for i, v in enumerate(names):
        sel = verticals == i
        if sel.any():
            out[v] = _recall(table[sel], ranks[sel], ks)
    out["all"] = _recall(table, ranks, ks)
    return out


def _query_tags(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (target, tag): the form "partial+misspelled" has the tags partial and misspelled."""
    tags = table.assign(tag=table["query_form"].str.split("+"), target=np.arange(len(table)))
    return tags.explode("tag")


def recall_by_query_tag(
    ranked: np.ndarray, rows: np.ndarray, table: pd.DataFrame, ks: list[int]
) -> dict[str, dict[str, float]]:
    """recall@K of the sessions whose query form has each tag (a base form, or a modifier: misspelled)."""
    ranks = target_hits(ranked, rows, table)
    tags = _query_tags(table)
    tag_ranks = ranks[tags["target"].to_numpy()]
    values = tags["tag"].to_numpy()
    return {str(t): _recall(tags[values == t], tag_ranks[values == t], ks) for t in sorted(set(values))}


def incumbent_ranking(features: FeatureSet, rows: np.ndarray, depth: int) -> np.ndarray:
    """The logged impressions of each session in position order (the incumbent's ranking), -1 padded."""
    imp = features.impressions
    imp = imp[np.isin(imp["session_row"].to_numpy(), rows)].sort_values(["session_row", "position"])
    imp = imp.assign(rank=imp.groupby("session_row").cumcount())
    imp = imp[imp["rank"] < depth]
    out = np.full((len(rows), depth), -1, np.int64)
    out[np.searchsorted(rows, imp["session_row"].to_numpy()), imp["rank"].to_numpy()] = imp[
        "doc_row"
    ].to_numpy()
    return out


def vertical_pools(features: FeatureSet, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per vertical with documents and sessions: (its document rows, its sessions' positions in rows)."""
    for i, _ in enumerate(features.verticals):
        pool = np.flatnonzero(features.doc_vertical == i)
        sel = np.flatnonzero(features.session_vertical[rows] == i)
        if len(pool) and len(sel):
            yield pool, sel


def bm25_ranking(features: FeatureSet, rows: np.ndarray, depth: int, k1: float, b: float) -> np.ndarray:
    """BM25 over the text of the session's vertical; documents without a matching term are not retrieved."""
    out = np.full((len(rows), depth), -1, np.int64)
    for pool, sel in vertical_pools(features, rows):
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index([normalize_text(t).split() for t in features.doc_texts[pool]], show_progress=False)
        queries = [normalize_text(q).split() for q in features.session_queries[rows[sel]]]
        k = min(depth, len(pool))
        found, scores = retriever.retrieve(queries, k=k, show_progress=False)
        out[sel, :k] = np.where(scores > 0, pool[found], -1)
    return out


def knn_ranking(
    docs: np.ndarray,
    queries: np.ndarray,
    features: FeatureSet,
    rows: np.ndarray,
    depth: int,
    block: int,
    shards: Shards = SERIAL,
) -> np.ndarray:
    """Exact KNN (inner product on L2-normalised embeddings) over the documents of each session's vertical,
    queries searched in shards of `block` on `shards` (ebr/runners.py). docs: one row per
    document; queries: one per session of `rows`."""
    out = np.full((len(rows), depth), -1, np.int64)
    for pool, sel in vertical_pools(features, rows):
        k = min(depth, len(pool))
        search = partial(_knn_block, docs[pool], queries[sel], k)
        found = np.concatenate(shards.map(search, shards.rows(len(sel), block), "evaluation"))
        out[sel, :k] = np.where(found >= 0, pool[np.maximum(found, 0)], -1)
    return out


def _knn_block(pool_vectors: np.ndarray, queries: np.ndarray, k: int, b: slice) -> np.ndarray:
    """Rows of the `k` nearest pool vectors of the queries `b` (exact inner product)."""
    return exact_knn(queries[b], pool_vectors, k)[1]


def markdown_report(report: Mapping[str, Any]) -> str:
    """Markdown tables of a report: recall against clicks, against intents and per query form."""
    ks = report["ks"]
    lines = []
    sections = [
        ("recall", "Recall@K against clicks (target set: the clicked documents of a held-out session)")
    ]
    if "recall_intent" in report:
        sections.append(("recall_intent", "Recall@K against the simulator's intents (ground truth)"))
    for key, title in sections:
        lines += [f"## {title}", "", "| model | vertical | " + " | ".join(f"R@{k}" for k in ks) + " |"]
        lines.append("| --- | --- |" + " ---: |" * len(ks))
        for model, per_vertical in report[key].items():
            for vertical, values in per_vertical.items():
                cells = " | ".join(f"{values[str(k)]:.4f}" for k in ks)
                lines.append(f"| {model} | {vertical} | {cells} |")
        lines.append("")
    if "recall_intent_by_query_form" in report:
        lines += [
            "## Recall@K against intents, per query form (a session counts under each tag of its form)",
            "",
        ]
        lines += ["| model | query form | " + " | ".join(f"R@{k}" for k in ks) + " |"]
        lines.append("| --- | --- |" + " ---: |" * len(ks))
        for model, per_form in report["recall_intent_by_query_form"].items():
            for form, values in per_form.items():
                cells = " | ".join(f"{values[str(k)]:.4f}" for k in ks)
                lines.append(f"| {model} | {form} | {cells} |")
        lines.append("")
    return "\n".join(lines)
