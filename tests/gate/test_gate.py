"""The recall gate's rules: floors, no regression against the published version, the baselines, reports."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from ebr.config import load_config
from ebr.evaluation.gate import GateConfig, GateFailedError, enforce, evaluate_gate, write_gate_report

CFG = GateConfig.from_mapping(
    {
        "tolerance": 0.01,
        "baselines": {"bm25": {"margin": 0.0}, "text": {"margin": 0.02}},
        "verticals": {"people": {"k": 50, "floor": 0.5}, "groups": {"k": 10, "floor": 0.3}},
    }
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
    assert [(c.vertical, c.rule, c.passed) for c in worse.checks] == [
        ("people", "floor", True),
        ("people", "published", False),
        ("groups", "floor", True),
        ("groups", "published", True),
    ]


def test_a_candidate_below_bm25_fails_naming_vertical_rule_value_and_threshold():
    result = evaluate_gate(
        {"people": 0.80, "groups": 0.61},
        None,
        CFG,
        baselines={"bm25": {"people": 0.75, "groups": 0.65}, "text": {"people": 0.81, "groups": 0.60}},
    )
    assert not result.passed
    assert (
        result.reason
        == "gate failed: vertical=groups recall@10=0.6100 < bm25 0.6500 - margin 0.0000 = 0.6500"
    )
    text = next(c for c in result.checks if c.vertical == "people" and c.rule == "text")
    assert text.passed and text.baseline == 0.81 and text.threshold == pytest.approx(0.79)
    # a rule whose baseline was not measured (or whose margin is off) is not checked
    off = GateConfig.from_mapping(
        {"tolerance": 0.0, "k": 10, "floor": 0.1, "baselines": {"bm25": None}}, ["groups"]
    )
    assert evaluate_gate({"groups": 0.61}, None, off, baselines={"bm25": {"groups": 0.9}}).passed


def test_a_vertical_without_gate_sessions_is_reported_not_failed():
    result = evaluate_gate({"people": 0.9}, None, CFG)
    assert result.passed
    missing = next(c for c in result.checks if c.vertical == "groups")
    assert missing.rule == "sessions" and missing.value is None and "reported, not checked" in missing.reason
    nothing = evaluate_gate({}, None, CFG)
    assert not nothing.passed and nothing.reason == "gate failed: no vertical has gate sessions (tune)"


def test_every_failure_is_counted():
    result = evaluate_gate({"people": 0.1, "groups": 0.1}, {"people": 0.5, "groups": 0.5}, CFG)
    assert not result.passed and result.reason.endswith("(and 3 more failing rule(s))")


def test_callables_are_measured_at_each_vertical_k():
    seen = []

    def candidate(vertical: str, k: int) -> float:
        seen.append((vertical, k))
        return 0.9

    assert evaluate_gate(candidate, lambda v, k: 0.91, CFG).passed
    assert seen == [("people", 50), ("groups", 10)]


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
    assert saved["checks"][2] == {
        "vertical": "groups",
        "rule": "floor",
        "metric": "recall@10",
        "value": 0.2,
        "threshold": 0.3,
        "sessions": 80,
        "passed": False,
        "reason": "vertical=groups recall@10=0.2000 < floor 0.3000",
        "baseline": None,
    }
    md = (tmp_path / "run" / "gate.md").read_text()
    assert "**Recall gate: FAILED**" in md
    assert "| groups | floor | recall@10 | 80 | 0.2000 | - | 0.3000 | FAIL |" in md
    assert "| groups | published | recall@10 | 80 | 0.2000 | 0.5000 | 0.4900 | FAIL |" in md


def test_gate_config_covers_exactly_the_verticals_present():
    conf = OmegaConf.to_container(load_config().gate)
    cfg = GateConfig.from_mapping(conf, ["jobs", "papers"])
    assert set(cfg.verticals) == {"jobs", "papers"} and cfg.verticals["jobs"].k == conf["k"]
    assert cfg.sessions == "tune" and cfg.margins == {"bm25": 0.0, "text": 0.02}
    tuned = GateConfig.from_mapping(
        conf | {"verticals": {"jobs": {"floor": 0.5}, "absent": {"k": 3}}}, ["jobs"]
    )
    assert tuned.verticals["jobs"].floor == 0.5 and "absent" not in tuned.verticals
    with pytest.raises(ValueError, match="gate.baselines: unknown baseline"):
        GateConfig.from_mapping(conf | {"baselines": {"bm42": {"margin": 0}}}, ["jobs"])
    with pytest.raises(ValueError, match="gate.sessions must be tune or evaluate"):
        GateConfig.from_mapping(conf | {"sessions": "train"}, ["jobs"])
