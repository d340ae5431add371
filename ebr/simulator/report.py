"""The world report: counts, name collisions, typos, failures, query forms, intents, graph statistics next to
SNAP ego-Facebook, and how much a context-aware ranking beats a text-only one on the same term matches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ebr.home import PROJECT_ROOT
from ebr.schema import SCHEMA_VERSION, VERTICALS
from ebr.simulator.graph import graph_statistics, reference_statistics
from ebr.simulator.sessions import SessionStats
from ebr.simulator.text import normalise
from ebr.simulator.typos import MAX_EDITS, OPS, edit_statistics

EDITS = tuple(str(k) for k in range(1, MAX_EDITS + 1))
_TYPO_KEYS = (
    "op_share",
    "position_bins",
    "substitution",
    "insertion_doubles_neighbour",
    "deletion_of_doubled_letter",
)


def _r(x: float) -> float:
    return round(float(x), 4)


def _shares(counter: Counter) -> dict[str, float]:
    total = sum(counter.values()) or 1
    return {k: _r(v / total) for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))}


def collision_rate(texts: np.ndarray) -> float:
    """Share of documents whose normalised text is shared by at least one other document."""
    if len(texts) == 0:
        return 0.0
    _, inverse, counts = np.unique(
        np.array([normalise(t) for t in texts]), return_inverse=True, return_counts=True
    )
    return _r((counts[inverse] > 1).mean())


def reference_path(configured: str) -> Path:
    path = Path(configured)
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def build_report(
    *,
    scale: str,
    seed: int,
    names: np.ndarray,
    group_titles: np.ndarray,
    event_titles: np.ndarray,
    n_users: int,
    edges: np.ndarray,
    memberships: dict[str, int],
    written: dict[str, int],
    stats: SessionStats,
    typo_reference: dict[str, Any],
    clustering_sample: int,
    reference_graph: str,
    rng: np.random.Generator,
) -> dict[str, Any]:
    total_sessions = sum(stats.sessions.values())
    name_values, name_counts = np.unique(names.astype(str), return_counts=True)
    top = np.lexsort((name_values, -name_counts))[:5]
    snap_path = reference_path(reference_graph)
    snap = reference_statistics(snap_path)
    world_typos = edit_statistics(stats.typo_pairs)
    headroom = {}
    for v in VERTICALS:
        h = stats.headroom[v]
        n = max(h["sessions"], 1)
        text, ctx = h["text_only_hits"] / n, h["with_context_hits"] / n
        headroom[v] = {
            "sessions": h["sessions"],
            "text_only_recall": _r(text),
            "with_context_recall": _r(ctx),
            "relative_gain": _r(ctx / text - 1) if text > 0 else None,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "scale": scale,
        "seed": seed,
        "counts": {
            "users": n_users,
            "friendships": int(len(edges)),
            "documents": {
                "people": len(names),
                "groups": len(group_titles),
                "events": len(event_titles),
                "total": len(names) + len(group_titles) + len(event_titles),
            },
            "memberships": memberships,
            "sessions": {
                **{v: stats.sessions[v] for v in VERTICALS},
                "total": total_sessions,
                "reformulations": sum(stats.reformulations.values()),
            },
            "impressions": written["impressions"],
            "clicks": written["clicks"],
        },
        "name_collision_rate": collision_rate(names),
        "people_search_target_name_shared_rate": _r(
            stats.people_target_name_shared / max(stats.sessions["people"], 1)
        ),
        "distinct_full_names": int(len(name_values)),
        "most_common_names": [[str(name_values[i]), int(name_counts[i])] for i in top],
        "group_title_collision_rate": collision_rate(group_titles),
        "event_title_collision_rate": collision_rate(event_titles),
        "typo_rate": _r(sum(stats.misspelled.values()) / max(total_sessions, 1)),
        "typo_rate_by_vertical": {v: _r(stats.misspelled[v] / max(stats.sessions[v], 1)) for v in VERTICALS},
        "typo_sources": _shares(stats.typo_sources),
        "typo_edit_statistics": {
            "world": {k: world_typos[k] for k in _TYPO_KEYS}
            | {"edit_count": world_typos["edit_count"], "pairs": world_typos["pairs"]},
            "birkbeck": {k: typo_reference[k] for k in _TYPO_KEYS}
            | {
                "edit_count": _edit_count_at(typo_reference, world_typos["length_share"]),
                "pairs": typo_reference["pairs"],
            },
            "note": "Birkbeck edits per word are re-weighted to the world's mix of word lengths",
        },
        "failed_session_rate": _r(sum(stats.failed.values()) / max(total_sessions, 1)),
        "failed_session_rate_by_vertical": {
            v: _r(stats.failed[v] / max(stats.sessions[v], 1)) for v in VERTICALS
        },
        "no_result_rate_by_vertical": {
            v: _r(stats.no_results[v] / max(stats.sessions[v], 1)) for v in VERTICALS
        },
        "query_forms": {v: _shares(stats.forms[v]) for v in VERTICALS},
        "intent_kinds": {v: _shares(stats.kinds[v]) for v in VERTICALS},
        "context_headroom": headroom,
        "graph": {
            "world": graph_statistics(n_users, edges, clustering_sample, rng),
            "snap_ego_facebook": snap,
            "snap_note": f"reference read from {reference_graph}"
            if snap is not None
            else f"reference graph not found at {reference_graph}: no comparison",
        },
    }


def render_markdown(r: dict[str, Any]) -> str:
    """The report as a short Markdown page."""
    c = r["counts"]
    lines = [
        f"# Simulated world: scale {r['scale']}, seed {r['seed']} (schema version {r['schema_version']})",
        "",
        "## Counts",
        "| table | rows |",
        "| --- | ---: |",
        f"| users | {c['users']:,} |",
        f"| friendships | {c['friendships']:,} |",
        *(f"| documents: {v} | {c['documents'][v]:,} |" for v in VERTICALS),
        *(f"| memberships: {k} | {n:,} |" for k, n in c["memberships"].items()),
        *(f"| sessions: {v} | {c['sessions'][v]:,} |" for v in VERTICALS),
        f"| sessions: total (of which reformulations) | {c['sessions']['total']:,} "
        f"({c['sessions']['reformulations']:,}) |",
        f"| impressions | {c['impressions']:,} |",
        f"| clicks | {c['clicks']:,} |",
        "",
        "## The paper's problems",
        "| measure | value |",
        "| --- | ---: |",
        "| name-collision rate (people documents whose full name another person shares) | "
        f"{r['name_collision_rate']:.1%} |",
        f"| people searches whose target's name is shared | {r['people_search_target_name_shared_rate']:.1%} "
        "|",
        f"| group titles shared by another group | {r['group_title_collision_rate']:.1%} |",
        f"| event titles shared by another event | {r['event_title_collision_rate']:.1%} |",
        f"| typo rate (queries with a misspelled word) | {r['typo_rate']:.1%} |",
        f"| failed-session rate (target not clicked) | {r['failed_session_rate']:.1%} |",
        "",
        "Most common names: " + ", ".join(f"{n} ({k})" for n, k in r["most_common_names"]),
        "",
        "| vertical | typo rate | failed | no results | text-only recall@k | with context | relative gain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in VERTICALS:
        h = r["context_headroom"][v]
        gain = "n/a" if h["relative_gain"] is None else f"{h['relative_gain']:+.1%}"
        lines.append(
            f"| {v} | {r['typo_rate_by_vertical'][v]:.1%} | {r['failed_session_rate_by_vertical'][v]:.1%} | "
            f"{r['no_result_rate_by_vertical'][v]:.1%} | {h['text_only_recall']:.1%} | "
            f"{h['with_context_recall']:.1%} | {gain} |"
        )
    lines += [
        "",
        "The headroom columns re-run the incumbent's term match on sampled sessions, ranked by popularity",
        "alone (text-only) and with the searcher's friends, memberships and location first (with context).",
        "",
    ]
    lines += ["## Query forms (all sessions; misspelled and spacing are on top of a form)", ""]
    for v in VERTICALS:
        base, extra = Counter(), Counter()
        for form, share in r["query_forms"][v].items():
            first, *more = form.split("+")
            base[first] += share
            extra.update(dict.fromkeys(more, share))
        parts = [f"{k} {s:.1%}" for k, s in base.most_common()] + [
            f"+{k} {s:.1%}" for k, s in sorted(extra.items())
        ]
        lines.append(f"- {v}: " + ", ".join(parts))
    lines += ["", "## Intent kinds", ""]
    for v in VERTICALS:
        lines.append(f"- {v}: " + ", ".join(f"{k} {s:.1%}" for k, s in r["intent_kinds"][v].items()))
    lines.append("")
    t = r["typo_edit_statistics"]
    lines += [
        "## Typos",
        "Sources: " + ", ".join(f"{k} {s:.1%}" for k, s in r["typo_sources"].items()),
        "",
        "| keyboard-edit statistic | world | Birkbeck |",
        "| --- | --- | --- |",
        f"| edits per word (1/2/3) | {_fmt(t['world']['edit_count'], EDITS)} | "
        f"{_fmt(t['birkbeck']['edit_count'], EDITS)} |",
        f"| operations (sub/ins/del/trans) | {_fmt(t['world']['op_share'], OPS)} | "
        f"{_fmt(t['birkbeck']['op_share'], OPS)} |",
        f"| position in the word (5 bins) | {_fmt(t['world']['position_bins'])} | "
        f"{_fmt(t['birkbeck']['position_bins'])} |",
        "",
        t["note"] + ".",
        "",
        "## Friendship graph next to SNAP ego-Facebook",
        "",
    ]
    g, s = r["graph"]["world"], r["graph"]["snap_ego_facebook"]
    rows = [
        ("nodes", "nodes"),
        ("edges", "edges"),
        ("average degree", "average_degree"),
        ("max degree", "max_degree"),
        ("degree CV", "degree_cv"),
        ("p90 / p50 degree", "p90_over_p50"),
        ("tail exponent (degrees >= median)", "tail_exponent"),
        ("average clustering", "average_clustering"),
        ("transitivity", "transitivity"),
    ]
    lines += ["| statistic | world | SNAP |", "| --- | ---: | ---: |"]
    for label, key in rows:
        lines.append(f"| {label} | {g[key]} | {s[key] if s else 'n/a'} |")
    for q in g["degree_quantiles"]:
        lines.append(
            f"| degree {q} | {g['degree_quantiles'][q]} | {s['degree_quantiles'][q] if s else 'n/a'} |"
        )
    lines += ["", r["graph"]["snap_note"], ""]
    return "\n".join(lines)


def _edit_count_at(reference: dict[str, Any], length_share: dict[str, float]) -> dict[str, float]:
    """The reference's edits-per-word distribution for a given mix of word lengths."""
    by_length = reference["edit_count_by_length"]
    return {k: _r(sum(length_share[b] * by_length[b][k] for b in by_length)) for k in reference["edit_count"]}


def _fmt(x: Any, keys: tuple[str, ...] = ()) -> str:
    values = [x[k] for k in keys] if keys else x
    return " / ".join(f"{v:.2f}" for v in values)
