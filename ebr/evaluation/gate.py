"""The recall gate's rules: a candidate is published only if, on every vertical present in the gate sessions,
its recall@K (measured exactly as it would be served) reaches

  floor      an absolute floor,
  published  the published version's recall on the same sessions, minus `tolerance`,
  bm25       the BM25 baseline on the same sessions (through the same engine), minus its margin,
  text       the text tower on the same sessions (its exact top-K), minus its margin.

and its NDCG@k of the final list (after the version's ranker, clicks as grade 1) reaches the published
version's minus `ndcg.tolerance` (the rule `ndcg`; reported without a published version or with the
tolerance null).

A vertical without gate sessions is reported, not failed. The rules take numbers or callables, so they are
tested without any model; ebr/steps/gate.py measures the candidate, the published version and the baselines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ebr.io import atomic_write_text

Measurement = Mapping[str, float] | Callable[[str, int], float]
BASELINES = ("bm25", "text")


class GateFailedError(RuntimeError):
    """The candidate did not pass the recall gate; the message is the gate's one-line reason."""


@dataclass(frozen=True)
class VerticalRule:
    k: int
    floor: float


@dataclass(frozen=True)
class GateConfig:
    """conf/gate/default.yaml for the verticals present: K and floor per vertical (defaults `k`, `floor`,
    overridden per vertical under `verticals`), the tolerance against the published version, the margins
    below the baselines (None: that rule is off) and which sessions the gate runs on."""

    verticals: dict[str, VerticalRule]
    tolerance: float
    margins: dict[str, float | None] = field(default_factory=dict)
    sessions: str = "tune"
    ndcg_k: int = 10  # NDCG@k of the final list, reported per vertical
    ndcg_tolerance: float | None = None  # None: the ndcg rule is off (reported only)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], verticals: Sequence[str] | None = None) -> GateConfig:
        """The rules of `verticals` (None: the verticals the config names)."""
        per = dict(cfg.get("verticals") or {})
        names = list(verticals) if verticals is not None else list(per)
        if not names:
            raise ValueError("gate: no verticals to check (the logs have none, or gate.verticals is empty)")
        rules = {}
        for v in names:
            rule = per.get(v) or {}
            k, floor = rule.get("k", cfg.get("k")), rule.get("floor", cfg.get("floor"))
            if k is None or floor is None:
                raise ValueError(f"gate.verticals.{v}: give k and floor (or gate.k and gate.floor)")
            if int(k) < 1 or not 0.0 <= float(floor) <= 1.0:
                raise ValueError(f"gate.verticals.{v}: k must be >= 1 and floor in [0, 1], got {k}, {floor}")
            rules[v] = VerticalRule(int(k), float(floor))
        baselines = dict(cfg.get("baselines") or {})
        unknown = sorted(set(baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"gate.baselines: unknown baseline(s) {unknown} (expected {BASELINES})")
        margins = {b: None if baselines.get(b) is None else float(baselines[b]["margin"]) for b in BASELINES}
        sessions = str(cfg.get("sessions", "tune"))
        if sessions not in ("tune", "evaluate"):
            raise ValueError(f"gate.sessions must be tune or evaluate, got {sessions!r}")
        ndcg = dict(cfg.get("ndcg") or {})
        ndcg_k = int(ndcg.get("k", cls.ndcg_k))
        if ndcg_k < 1:
            raise ValueError(f"gate.ndcg.k must be >= 1, got {ndcg_k}")
        tolerance = None if ndcg.get("tolerance") is None else float(ndcg["tolerance"])
        return cls(rules, float(cfg["tolerance"]), margins, sessions, ndcg_k, tolerance)


@dataclass
class Check:
    """One rule on one vertical: its value, its threshold and the sessions it was measured on."""

    vertical: str
    rule: str  # sessions | floor | published | bm25 | text | ndcg
    metric: str  # e.g. recall@50
    value: float | None
    threshold: float | None
    sessions: int
    passed: bool
    reason: str
    baseline: float | None = None  # published, bm25, text: the compared recall (threshold = it - margin)


@dataclass
class GateResult:
    passed: bool
    reason: str  # one line: the first failure (vertical, rule, value, threshold) or a pass summary
    checks: list[Check]
    published_version: str | None = None
    sessions: dict[str, int] = field(default_factory=dict)
    # per vertical, when the candidate has a query policy: the share of requests whose (nn) part it skipped,
    # recall@K and NDCG as served (policy on, what the rules judge) and with the policy off; reported only
    query_policy: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float | None]:
        """{vertical: candidate recall} (what the version registry lists)."""
        return {c.vertical: c.value for c in self.checks if c.rule in ("floor", "sessions")}

    def markdown(self) -> str:
        lines = [
            f"**Recall gate: {'PASSED' if self.passed else 'FAILED'}**: {self.reason}",
            "",
            f"Published version compared: {self.published_version or 'none'}",
            "",
            "| vertical | rule | metric | sessions | candidate | compared | threshold | verdict |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in self.checks:
            verdict = "pass" if c.passed else "FAIL"
            if c.rule == "sessions":
                verdict = "not measured"
            lines.append(
                f"| {c.vertical} | {c.rule} | {c.metric} | {c.sessions} | {_fmt(c.value)} | "
                f"{_fmt(c.baseline)} | {_fmt(c.threshold)} | {verdict} |"
            )
        if self.query_policy:
            lines += [
                "",
                "Query policy (reported, not judged: the rules above measure it on):",
                "",
                "| vertical | nn skipped | recall, policy on | recall, policy off | ndcg, on | ndcg, off |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for vertical, p in self.query_policy.items():
                values = [p[k] for k in ("recall", "recall_policy_off", "ndcg", "ndcg_policy_off")]
                shown = " | ".join(map(_fmt, values))
                lines.append(f"| {vertical} | {p['nn_skipped']:.1%} | {shown} |")
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _value(measurement: Measurement | None, vertical: str, k: int) -> float | None:
    if measurement is None:
        return None
    if callable(measurement):
        return measurement(vertical, k)
    return measurement.get(vertical)


def _vertical_checks(
    vertical: str,
    rule: VerticalRule,
    value: float,
    published: float | None,
    published_version: str | None,
    baselines: Mapping[str, float | None],
    cfg: GateConfig,
    n: int,
) -> list[Check]:
    metric = f"recall@{rule.k}"
    head = f"vertical={vertical} {metric}={value:.4f}"
    checks = [
        Check(
            vertical, "floor", metric, value, rule.floor, n, value >= rule.floor,
            f"{head} {'>=' if value >= rule.floor else '<'} floor {rule.floor:.4f}",
        )
    ]  # fmt: skip
    if published is not None:
        threshold = published - cfg.tolerance
        ok = value >= threshold
        checks.append(
            Check(
                vertical, "published", metric, value, threshold, n, ok,
                f"{head} {'>=' if ok else '<'} published {published_version or ''} {published:.4f} - "
                f"tolerance {cfg.tolerance:.4f} = {threshold:.4f}", published,
            )
        )  # fmt: skip
    for name in BASELINES:
        base, margin = baselines.get(name), cfg.margins.get(name)
        if base is None or margin is None:
            continue
        threshold = base - margin
        ok = value >= threshold
        checks.append(
            Check(
                vertical, name, metric, value, threshold, n, ok,
                f"{head} {'>=' if ok else '<'} {name} {base:.4f} - margin {margin:.4f} = {threshold:.4f}",
                base,
            )
        )  # fmt: skip
    return checks


def _ndcg_check(vertical: str, value: float, published: float | None, cfg: GateConfig, n: int) -> Check:
    """The rule `ndcg`: the candidate's NDCG@k >= the published version's - ndcg.tolerance (or reported)."""
    metric = f"ndcg@{cfg.ndcg_k}"
    head = f"vertical={vertical} {metric}={value:.4f}"
    if published is None or cfg.ndcg_tolerance is None:
        return Check(vertical, "ndcg", metric, value, None, n, True, f"{head} (reported)", published)
    threshold = published - cfg.ndcg_tolerance
    ok = value >= threshold
    reason = (
        f"{head} {'>=' if ok else '<'} published {published:.4f} - tolerance {cfg.ndcg_tolerance:.4f} = "
        f"{threshold:.4f}"
    )
    return Check(vertical, "ndcg", metric, value, threshold, n, ok, reason, published)


def evaluate_gate(
    candidate: Measurement,
    published: Measurement | None,
    cfg: GateConfig,
    published_version: str | None = None,
    sessions: Mapping[str, int] | None = None,
    baselines: Mapping[str, Measurement] | None = None,
    ndcg: Mapping[str, float] | None = None,
    published_ndcg: Mapping[str, float] | None = None,
) -> GateResult:
    """Check every vertical of `cfg`. Measurements give recall@K per vertical, as a mapping {vertical: value}
    measured at that vertical's K or a callable (vertical, k) -> value; a vertical the candidate has no value
    for has no gate sessions (reported, not failed). `published` is None when nothing is served; `baselines`
    maps bm25 / text to their measurements (a missing one: its rule is not checked); `ndcg` and
    `published_ndcg` give NDCG@k of the final lists per vertical (the rule `ndcg`)."""
    checks: list[Check] = []
    counts = dict(sessions or {})
    for vertical, rule in cfg.verticals.items():
        value = _value(candidate, vertical, rule.k)
        n = int(counts.get(vertical, 0))
        if value is None:
            checks.append(
                Check(
                    vertical, "sessions", f"recall@{rule.k}", None, None, 0, True,
                    f"vertical={vertical}: no gate sessions ({cfg.sessions}): reported, not checked",
                )
            )  # fmt: skip
            continue
        base = {name: _value(m, vertical, rule.k) for name, m in (baselines or {}).items()}
        old = _value(published, vertical, rule.k)
        checks += _vertical_checks(vertical, rule, value, old, published_version, base, cfg, n)
        if ndcg and vertical in ndcg:
            checks.append(_ndcg_check(vertical, ndcg[vertical], (published_ndcg or {}).get(vertical), cfg, n))
    failed = [c for c in checks if not c.passed]
    measured = [c for c in checks if c.rule != "sessions"]
    if failed:
        more = f" (and {len(failed) - 1} more failing rule(s))" if len(failed) > 1 else ""
        reason = f"gate failed: {failed[0].reason}{more}"
    elif not measured:
        failed, reason = checks, f"gate failed: no vertical has gate sessions ({cfg.sessions})"
    else:
        reason = "gate passed: " + "; ".join(c.reason for c in measured)
    return GateResult(not failed, reason, checks, published_version, counts)


def write_gate_report(result: GateResult, out_dir: Path) -> Path:
    """Write gate.json and gate.md into `out_dir` (the run folder); return the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "gate.md", result.markdown())
    path = out_dir / "gate.json"
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2))
    return path


def enforce(result: GateResult) -> None:
    """Raise GateFailedError(reason) for a failed gate (the flow then fails and publishes nothing)."""
    if not result.passed:
        raise GateFailedError(result.reason)
