"""The retrain's pictures: each writes a PNG from a small hand-made input; the data behind the marks (the
Pareto front, the gate's rules) are exact."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgb

from ebr.evaluation import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000
    assert not plt.get_fignums()  # every figure closed


def test_recall_curves_one_panel_per_vertical(tmp_path: Path) -> None:
    recall = {
        "text": {"people": {"1": 0.2, "10": 0.5, "100": 0.9}, "all": {"1": 0.1, "10": 0.4, "100": 0.8}},
        "bm25": {"people": {1: 0.1, 10: 0.3, 100: 0.6}},
    }
    _png(plots.recall_curves(recall, tmp_path / "recall.png"))
    with pytest.raises(ValueError, match="empty recall table"):
        plots.recall_curves({}, tmp_path / "none.png")


def test_front_2d_is_exact_on_a_known_input() -> None:
    scanned = [0.01, 0.02, 0.02, 0.05, 0.10, 0.03]
    accuracy = [0.50, 0.45, 0.70, 0.65, 0.90, 0.80]
    # 0.02/0.45 is beaten by 0.01/0.50; 0.05/0.65 by 0.03/0.80
    assert plots.front_2d(scanned, accuracy) == [0, 2, 5, 4]
    assert plots.front_2d([], []) == []


def test_ann_pareto_marks_the_chosen_point(tmp_path: Path) -> None:
    def point(factory: str, scanned: float, recall: float, chosen: bool = False) -> dict:
        return {"factory": factory, "scanned": scanned, "recall": recall, "one_recall": 0.0, "chosen": chosen}

    points = [
        point("IVF64,PQ8", 0.01, 0.5),
        point("IVF64,PQ8", 0.04, 0.8, True),
        point("IVF256,PQ8", 0.02, 0.6),
    ]
    target = {"metric": "recall_at_k", "k": 10, "threshold": 0.78}
    fig = plots.ann_figure(points, target, "unified")
    ax = fig.axes[0]
    stars = [c for c in ax.collections if c.get_label() == "chosen"]
    assert len(stars) == 1 and stars[0].get_offsets().tolist() == [[4.0, 0.8]]  # % scanned, recall@10
    assert [line.get_ydata()[0] for line in ax.lines if line.get_label() == "target"] == [0.78]
    assert ax.get_ylabel() == "recall@10"
    plt.close(fig)
    _png(plots.ann_pareto(points, target, "unified", tmp_path / "ann.png"))
    with pytest.raises(ValueError, match="no operating points for 'unified'"):
        plots.ann_pareto([], target, "unified", tmp_path / "none.png")


def test_loss_curves_train_and_validation(tmp_path: Path) -> None:
    training = {
        "text": {"epoch_loss": [0.3, 0.2, 0.15], "epoch_val_loss": [0.32, 0.25, 0.22]},
        "pretrained": {"steps": 0},  # not trained: left out
    }
    _png(plots.loss_curves(training, tmp_path / "loss.png"))


def _check(vertical: str, rule: str, value: float | None, threshold: float | None, passed: bool) -> dict:
    return {"vertical": vertical, "rule": rule, "metric": "recall@50", "value": value, "threshold": threshold,
            "passed": passed}  # fmt: skip


def test_gate_rows_and_picture(tmp_path: Path) -> None:
    checks = [
        _check("people", "floor", 0.6, 0.5, True),
        _check("groups", "bm25", 0.4, 0.45, False),
        _check("events", "sessions", None, None, True),  # no gate sessions: not drawn
    ]
    assert plots.gate_rows(checks) == [
        ("people floor (recall@50)", 0.6, 0.5, True),
        ("groups bm25 (recall@50)", 0.4, 0.45, False),
    ]
    fig = plots.gate_figure(checks)
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_width() for b in bars] == [0.6, 0.4]
    assert [b.get_facecolor()[:3] for b in bars] == [to_rgb(plots.PASS), to_rgb(plots.FAIL)]
    ticks = [c for c in ax.collections if c.get_label() == "threshold"][0]
    assert ticks.get_offsets()[:, 0].tolist() == [0.5, 0.45]
    plt.close(fig)
    _png(plots.gate_rules(checks, tmp_path / "gate.png"))
