"""Step `query-policy`: the query selection policy (ebr/selection/queries.py) trained on the run's train
sessions, measured through the staged candidate, and added to it as its stage `query_policy` before the
recall gate measures it (docs/selection.md#query-selection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ebr.config import typed
from ebr.models.features import FeatureSet
from ebr.registry.publication import add_stage
from ebr.retrieval.config import load_engine_config
from ebr.retrieval.service import SearchService
from ebr.selection.queries import train_policy
from ebr.steps.sessions import session_requests

STAGE = "query_policy"


def train_query_policy(
    cfg: DictConfig, db_path: Path, features: FeatureSet, candidate: Path, out: Path
) -> dict[str, Any]:
    """Train the policy on the train sessions that clicked something, write it to `out/stage`, add it to the
    candidate; returns the summary (also the manifest's `stages.query_policy`)."""
    sessions = session_requests(db_path, features, "train")
    requests = [r for s in sessions.values() for r in s.requests]
    targets = [t for s in sessions.values() for t in s.targets]
    service = SearchService.open(candidate, load_engine_config(), writable=False, dataset=cfg.data.dataset)
    try:
        summary = train_policy(
            typed(cfg.query_selection),
            service,
            requests,
            targets,
            list(features.verticals),
            int(cfg.seed),
            out / "stage",
        )
    finally:
        service.close()
    summary["sessions"] = {v: len(s.requests) for v, s in sessions.items()}
    add_stage(candidate, STAGE, out / "stage", summary)
    return summary


def policy_markdown(summary: dict[str, Any]) -> str:
    """The step's summary as the flow's markdown artifact."""
    lines = [
        f"**Query selection policy**: rules on: {', '.join(summary['rules']) or 'none'} "
        f"(trained on {summary['requests']} train requests with a click)",
        "",
    ]
    if "repeat_click" in summary:
        lines.append(
            f"- repeat_click: {summary['repeat_click']['pairs']} (searcher, query) pairs with a click"
        )
    if "length" in summary:
        band = summary["length"]
        lines.append(
            f"- length: queries of >= {band['min_tokens']} tokens and <= {band['max_chars']} characters: "
            f"{band['matched']} the nn part"
        )
    c = summary.get("classifier")
    if c is not None:
        state = "on" if "classifier" in summary["rules"] else f"off ({c.get('why')})"
        lines += [
            f"- classifier: {state}; {c['requests']} requests replayed at k={c['k']}: clicked document found "
            f"with nn {_pct(c['found_with_nn'])}, term matching alone {_pct(c['found_term_only'])}, "
            f"nn helps (label 1) {_pct(c['nn_helps'])} ({c['positives']})",
            f"  held out {c['held_out']}: AUC {_num(c.get('auc'))}, accuracy {_num(c.get('accuracy'))}; "
            f"skip when P(nn helps) < {c['threshold']}",
        ]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
