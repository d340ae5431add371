"""The recall gate's verdicts: floors, regression against the published version, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from ebr.config import load_config
from ebr.steps.gate import (
    GateConfig,
    GateFailedError,
    GateSessions,
    enforce,
    evaluate_gate,
    measure_recall,
    served_recall,
    write_gate_report,
)

CFG = GateConfig.from_mapping(
    {"tolerance": 0.01, "verticals": {"people": {"k": 50, "floor": 0.5}, "groups": {"k": 10, "floor": 0.3}}}
)


def test_passes_when_floors_are_met_and_nothing_is_published():
    result = evaluate_gate({"people": 0.6, "groups": 0.3}, None, CFG)
    assert result.passed and result.reason.startswith("gate passed: vertical=people recall@50=0.6000")
    enforce(result)


def test_fails_below_the_absolute_floor_with_a_one_line_reason():
    result = evaluate_gate({"people": 0.6, "groups": 0.2999}, None, CFG)
    assert not result.passed
    assert result.reason == "gate failed: vertical=groups recall@10=0.2999 < floor 0.3000"
    with pytest.raises(GateFailedError, match="vertical=groups recall@10=0.2999 < floor 0.3000"):
        enforce(result)


def test_fails_when_worse_than_published_beyond_the_tolerance():
    published = {"people": 0.70, "groups": 0.40}
    within = evaluate_gate({"people": 0.6901, "groups": 0.40}, published, CFG, published_version="v0003")
    assert within.passed
    worse = evaluate_gate({"people": 0.6899, "groups": 0.45}, published, CFG, published_version="v0003")
    assert not worse.passed
    assert worse.reason == (
        "gate failed: vertical=people recall@50=0.6899 < published v0003 0.7000 - tolerance 0.0100 = 0.6900"
    )
    assert [c.passed for c in worse.checks] == [False, True]


def test_every_failure_is_counted_and_a_missing_vertical_fails():
    result = evaluate_gate({"people": 0.1}, None, CFG)
    assert not result.passed
    assert result.reason.endswith("(and 1 more failing vertical(s))")
    assert "no held-out sessions" in result.checks[1].reason


def test_callables_are_measured_at_each_vertical_k():
    seen = []

    def candidate(vertical: str, k: int) -> float:
        seen.append((vertical, k))
        return 0.9

    assert evaluate_gate(candidate, lambda v, k: 0.91, CFG).passed
    assert seen == [("people", 50), ("groups", 10)]


def test_measure_recall_uses_each_vertical_k():
    sessions = {
        "people": GateSessions(queries=[0, 1], targets=[np.array([7]), np.array([8])]),
        "groups": GateSessions(queries=[0], targets=[np.array([3])]),
        "events": GateSessions(queries=[0], targets=[np.array([3])]),  # not configured: ignored
    }

    def search(queries, k):
        return np.tile(np.arange(k) + 3, (len(queries), 1))  # docs 3, 4, 5, ...

    assert measure_recall(search, sessions, CFG) == {"people": 1.0, "groups": 1.0}
    assert measure_recall(lambda q, k: np.full((len(q), k), -1), sessions, CFG) == {
        "people": 0.0,
        "groups": 0.0,
    }


def test_report_json_and_markdown(tmp_path):
    result = evaluate_gate(
        {"people": 0.6, "groups": 0.2},
        {"people": 0.6, "groups": 0.5},
        CFG,
        "v0001",
        sessions={"people": 120, "groups": 80},
    )
    path = write_gate_report(result, tmp_path / "run")
    saved = json.loads(path.read_text())
    assert (
        saved["passed"] is False
        and saved["reason"] == result.reason
        and saved["published_version"] == "v0001"
    )
    assert saved["checks"][1] == {
        "vertical": "groups",
        "metric": "recall@10",
        "candidate": 0.2,
        "floor": 0.3,
        "published": 0.5,
        "tolerance": 0.01,
        "passed": False,
        "reason": "vertical=groups recall@10=0.2000 < floor 0.3000",
    }
    md = (tmp_path / "run" / "gate.md").read_text()
    assert "**Recall gate: FAILED**" in md and "| groups | recall@10 | 80 | 0.2000 | 0.3000 | 0.5000 |" in md


def test_nothing_served_means_no_published_recall(ebr_home):
    assert served_recall({}, CFG) is None


def test_gate_config_matches_conf_gate_default():
    cfg = GateConfig.from_mapping(OmegaConf.to_container(load_config().gate))
    assert set(cfg.verticals) == {"people", "groups", "events"} and cfg.tolerance >= 0
