"""A sweep's labels, verdicts and comparison: flow run names and tags from Hydra's overrides, a losing job's
verdict, the comparison table and plot, the DuckDB table (the sweeps themselves: tests/e2e/test_sweep.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from ebr import home
from ebr.evaluation.gate import GateConfig, GateFailedError, evaluate_gate
from ebr.evaluation.plots import sweep_figure as figure
from ebr.evaluation.plots import sweep_recall as plot
from ebr.flows.retrain import check_verdict, report_metric
from ebr.flows.sweep import comparison_markdown, job_rows, store, sweep_arguments, sweep_labels

GRID_ARGV = ["-m", "experiment=smoke", "model.margin=0.1,0.3", "mining.easy_hard_ratio=10,100"]


def _report(margin: float, ratio: float, recall: float, seed: int = 42, vertical: str = "people") -> dict:
    return {
        "run_id": f"r{margin}-{ratio}-{seed}",
        "config": {
            "model": {"margin": margin},
            "mining": {"easy_hard_ratio": ratio},
            "seed": seed,
            "data": {"dataset": "sim-tiny-s7"},
        },
        "gate": {"passed": True},
        "recall": {"unified_ohnm": {vertical: {"10": recall, "100": 1.0}, "all": {"10": recall, "100": 1.0}}},
    }


def test_a_grid_job_is_named_and_tagged_by_its_swept_values_only() -> None:
    job = ["experiment=smoke", "model.margin=0.3", "mining.easy_hard_ratio=10"]
    name, tags = sweep_labels("20261202T183000", 3, job, sweep_arguments(GRID_ARGV, None))
    assert name == "sweep-20261202T183000-job3-margin=0.3-easy_hard_ratio=10"
    assert tags == ["sweep:20261202T183000", "job:3", "model.margin=0.3", "mining.easy_hard_ratio=10"]


def test_optuna_and_range_sweeps_are_swept_values_too() -> None:
    params = {"model.margin": "interval(0.1, 0.8)", "mining.easy_hard_ratio": "choice(1, 10, 100, 1000)"}
    argv = ["-m", "hparams_search=optuna", "experiment=smoke", "hydra.sweeper.n_trials=2", "seed=range(1,3)"]
    job = ["model.margin=0.42", "mining.easy_hard_ratio=100", "hparams_search=optuna", "seed=2"]
    name, tags = sweep_labels("s", 0, job, sweep_arguments(argv, params))
    assert name == "sweep-s-job0-margin=0.42-easy_hard_ratio=100-seed=2"
    assert tags[2:] == ["model.margin=0.42", "mining.easy_hard_ratio=100", "seed=2"]


def test_a_job_that_loses_to_the_published_version_is_a_verdict_unless_it_publishes() -> None:
    cfg = GateConfig.from_mapping({"tolerance": 0.01, "verticals": {"people": {"k": 50, "floor": 0.5}}})
    lost = evaluate_gate({"people": 0.60}, {"people": 0.70}, cfg, published_version="v0001")
    report = {"gate": {"passed": lost.passed, "reason": lost.reason}}
    check_verdict(lost, publish=False, report=report)  # a sweep job / --no-publish: completes
    with pytest.raises(GateFailedError, match="< published v0001 0.7000") as failed:
        check_verdict(lost, publish=True, report=report)  # a run meant to publish fails
    assert failed.value.report is report
    check_verdict(evaluate_gate({"people": 0.70}, {"people": 0.70}, cfg), publish=True, report=report)


def test_comparison_table_has_one_row_per_setting_and_averages_seeds() -> None:
    rows = job_rows("s", 0, _report(0.1, 10, 0.5)) + job_rows("s", 1, _report(0.3, 10, 0.6))
    markdown = comparison_markdown(pd.DataFrame(rows), "unified_ohnm")
    assert "| 0.1 | 10 | 0.5000 | 0.5000 |" in markdown
    assert "| 0.3 | 10 | 0.6000 | 0.6000 |" in markdown and "seeds" not in markdown
    seeded = [job_rows("s", s, _report(0.1, 10, r, seed=s)) for s, r in ((1, 0.4), (2, 0.5), (3, 0.9))]
    markdown = comparison_markdown(pd.DataFrame(sum(seeded, [])), "unified_ohnm")
    assert "(mean of 3 seeds)" in markdown and "| 0.1 | 10 | 0.6000 | 0.6000 |" in markdown


def _seeded_table() -> pd.DataFrame:
    """Two verticals far apart in recall, two ratios, two margins, three seeds."""
    rows = []
    for vertical, base in (("people", 0.1), ("groups", 0.8)):
        for ratio in (10, 100):
            for margin in (0.1, 0.3):
                for seed, noise in ((1, -0.05), (2, 0.0), (3, 0.05)):
                    report = _report(margin, ratio, base + margin / 10 + noise, seed=seed, vertical=vertical)
                    rows += [r for r in job_rows("s", seed, report) if r["vertical"] == vertical]
    return pd.DataFrame(rows)


def test_plot_panels_share_one_y_axis_and_band_the_seeds() -> None:
    fig = figure(_seeded_table(), "unified_ohnm")
    groups, people = fig.axes
    assert groups.get_shared_y_axes().joined(groups, people)
    low, high = people.get_ylim()
    assert groups.get_ylim() == (low, high) and low < 0.05 and high > 0.88  # both panels' data in view
    assert len(people.collections) == 2  # one min-max band per easy:hard ratio
    band = people.collections[0].get_paths()[0].vertices
    assert np.isclose(band[:, 1].min(), 0.1 + 0.01 - 0.05) and np.isclose(band[:, 1].max(), 0.1 + 0.03 + 0.05)
    mean = people.lines[0].get_ydata()
    assert np.allclose(mean, [0.11, 0.13])
    one_seed = figure(_seeded_table().query("seed == 2"), "unified_ohnm")
    assert not any(ax.collections for ax in one_seed.axes)


def test_plot_writes_a_png_and_store_appends_to_the_datasets_duckdb(ebr_home: Path, tmp_path: Path) -> None:
    table = _seeded_table()
    png = plot(table, "unified_ohnm", tmp_path / "recall.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store(table)
    store(table)
    with duckdb.connect(str(home.db_path("sim-tiny-s7")), read_only=True) as con:
        count, seeds = con.execute("SELECT count(*), count(DISTINCT seed) FROM sweep_results").fetchone()
    assert (count, seeds) == (2 * len(table), 3)


def test_report_metric_names_a_missing_key() -> None:
    report = {"recall": {"unified": {"all": {"10": 0.5}}}}
    assert report_metric(report, "recall.unified.all.10") == 0.5
    with pytest.raises(KeyError, match=r"optimized_metric: 'recall.text.all.10' is not in .*\(no 'text'\)"):
        report_metric(report, "recall.text.all.10")
