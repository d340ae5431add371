"""The recall gate: a candidate is published only if, on held-out sessions no training or tuning step saw,
its recall@K reaches each vertical's absolute floor AND is at most `tolerance` below the served version's
recall measured on the same sessions.

The gate itself (`evaluate_gate`) takes numbers or callables, so it is tested without any model; the
measuring helpers run a `Retriever` (the candidate in memory, or the served version loaded from disk) on the
sessions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebr import registry
from ebr.ann.knn import recall_at_k
from ebr.retrieval.retrievers import QueryEncoder, default_encoder_loader, load_version

Measurement = Mapping[str, float] | Callable[[str, int], float]


class GateFailedError(RuntimeError):
    """The candidate did not pass the recall gate; the message is the gate's one-line reason."""


@dataclass(frozen=True)
class VerticalRule:
    k: int
    floor: float


@dataclass(frozen=True)
class GateConfig:
    """Mirrors conf/gate/default.yaml: per-vertical K and absolute floor, tolerance below the published."""

    verticals: dict[str, VerticalRule]
    tolerance: float

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> GateConfig:
        verticals = {v: VerticalRule(int(r["k"]), float(r["floor"])) for v, r in cfg["verticals"].items()}
        if not verticals:
            raise ValueError("gate.verticals: configure at least one vertical")
        return cls(verticals=verticals, tolerance=float(cfg["tolerance"]))


@dataclass(frozen=True)
class GateSessions:
    """Held-out sessions of one vertical: raw queries (what the query towers encode) and target doc ids."""

    queries: Sequence[Any]
    targets: Sequence[np.ndarray]


@dataclass
class VerticalCheck:
    vertical: str
    metric: str  # e.g. recall@50
    candidate: float | None
    floor: float
    published: float | None
    tolerance: float
    passed: bool
    reason: str


@dataclass
class GateResult:
    passed: bool
    reason: str  # one line: the first failure (vertical, metric, value, threshold) or a pass summary
    checks: list[VerticalCheck]
    published_version: str | None = None
    sessions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float | None]:
        """{vertical: candidate recall} (what the version registry lists)."""
        return {c.vertical: c.candidate for c in self.checks}

    def markdown(self) -> str:
        against = f"published {self.published_version}" if self.published_version else "published (none)"
        lines = [
            f"**Recall gate: {'PASSED' if self.passed else 'FAILED'}**: {self.reason}",
            "",
            f"| vertical | metric | sessions | candidate | floor | {against} | tolerance | verdict |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in self.checks:
            lines.append(
                f"| {c.vertical} | {c.metric} | {self.sessions.get(c.vertical, '-')} | {_fmt(c.candidate)} | "
                f"{c.floor:.4f} | {_fmt(c.published)} | {c.tolerance:.4f} | "
                f"{'pass' if c.passed else 'FAIL'} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _value(measurement: Measurement | None, vertical: str, k: int) -> float | None:
    if measurement is None:
        return None
    if callable(measurement):
        return measurement(vertical, k)
    return measurement.get(vertical)


def evaluate_gate(
    candidate: Measurement,
    published: Measurement | None,
    cfg: GateConfig,
    published_version: str | None = None,
    sessions: Mapping[str, int] | None = None,
) -> GateResult:
    """Check every configured vertical; `candidate` / `published` give recall@K per vertical, as a mapping
    {vertical: value} measured at that vertical's K, or a callable (vertical, k) -> value. `published` is
    None when nothing is served yet (then only the floors apply)."""
    checks = []
    for vertical, rule in cfg.verticals.items():
        metric = f"recall@{rule.k}"
        value = _value(candidate, vertical, rule.k)
        old = _value(published, vertical, rule.k)
        head = f"vertical={vertical} {metric}"
        if value is None:
            passed, reason = False, f"{head}: not measured (no held-out sessions for this vertical)"
        elif value < rule.floor:
            passed, reason = False, f"{head}={value:.4f} < floor {rule.floor:.4f}"
        elif old is not None and value < old - cfg.tolerance:
            passed = False
            reason = (
                f"{head}={value:.4f} < published {published_version or ''} {old:.4f} - tolerance "
                f"{cfg.tolerance:.4f} = {old - cfg.tolerance:.4f}"
            )
        else:
            passed = True
            reason = f"{head}={value:.4f} >= floor {rule.floor:.4f}" + (
                f", >= published {old:.4f} - {cfg.tolerance:.4f}" if old is not None else ""
            )
        checks.append(VerticalCheck(vertical, metric, value, rule.floor, old, cfg.tolerance, passed, reason))
    failed = [c for c in checks if not c.passed]
    if failed:
        more = f" (and {len(failed) - 1} more failing vertical(s))" if len(failed) > 1 else ""
        reason = f"gate failed: {failed[0].reason}{more}"
    else:
        reason = "gate passed: " + "; ".join(c.reason for c in checks)
    return GateResult(not failed, reason, checks, published_version, dict(sessions or {}))


def measure_recall(
    search: Callable[[Sequence[Any], int], np.ndarray],
    sessions: Mapping[str, GateSessions],
    cfg: GateConfig,
) -> dict[str, float]:
    """recall@K per configured vertical that has sessions; `search(queries, k)` returns top-k doc ids."""
    out = {}
    for vertical, rule in cfg.verticals.items():
        s = sessions.get(vertical)
        if s is not None and len(s.queries):
            out[vertical] = recall_at_k(search(s.queries, rule.k), s.targets, rule.k)
    return out


def served_recall(
    sessions: Mapping[str, GateSessions],
    cfg: GateConfig,
    encoder_loader: Callable[[Path], QueryEncoder] = default_encoder_loader,
) -> tuple[str, dict[str, float]] | None:
    """(served version, its recall per vertical on `sessions`), or None when nothing is served.

    The served version is verified against its manifest first (CorruptVersionError names the bad file).
    """
    if registry.served_version() is None:
        return None
    retriever = load_version(registry.served_version_dir(verify=False), encoder_loader=encoder_loader)
    return retriever.version or "", measure_recall(retriever.search, sessions, cfg)


def run_gate(
    candidate: Callable[[Sequence[Any], int], np.ndarray],
    sessions: Mapping[str, GateSessions],
    cfg: GateConfig,
    out_dir: Path,
    encoder_loader: Callable[[Path], QueryEncoder] = default_encoder_loader,
) -> GateResult:
    """Measure the candidate (`candidate(queries, k)` -> top-k doc ids, e.g. `Retriever.search`) and the
    served version on the same sessions, decide, and write gate.json / gate.md into `out_dir`."""
    served = served_recall(sessions, cfg, encoder_loader)
    version, published = served if served is not None else (None, None)
    result = evaluate_gate(
        measure_recall(candidate, sessions, cfg),
        published,
        cfg,
        published_version=version,
        sessions={v: len(s.queries) for v, s in sessions.items()},
    )
    write_gate_report(result, out_dir)
    return result


def write_gate_report(result: GateResult, out_dir: Path) -> Path:
    """Write gate.json and gate.md into `out_dir` (the run folder); return the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    registry.atomic_write_text(out_dir / "gate.md", result.markdown())
    path = out_dir / "gate.json"
    registry.atomic_write_text(path, json.dumps(result.to_dict(), indent=2))
    return path


def enforce(result: GateResult) -> None:
    """Raise GateFailedError(reason) for a failed gate (the flow then fails and publishes nothing)."""
    if not result.passed:
        raise GateFailedError(result.reason)
