"""Pictures of a retrain, drawn as PNG files from the data its steps return (matplotlib, Agg, figures closed):

  recall_curves   recall@K against K, one panel per vertical, one line per model (step `evaluate`)
  ann_pareto      recall against the share of documents scanned, per index type, the 2-D Pareto front drawn
                  and the chosen operating point marked (step `ensembles-and-ann`, one per embedding key)
  loss_curves     training (and validation) loss per epoch, one line per model (step `train-towers`)
  gate_rules      each gate rule's candidate value against its threshold, pass green, fail red (`recall-gate`)
  sweep_recall    a sweep's recall@10 against margin, one panel per vertical on one y-axis, one line per
                  easy:hard ratio, a min-max band over seeds (ebr/flows/sweep.py)

Each function writes `path` and returns it (`ann_figure`, `gate_figure` and `sweep_figure` give the figure
itself); the data behind the marks (`front_2d`, `gate_rows`) are plain functions, tested exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

PASS, FAIL = "tab:green", "tab:red"


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def recall_curves(recall: Mapping[str, Mapping[str, Mapping[Any, float]]], path: Path) -> Path:
    """recall[model][vertical][K] (K as int or str) as recall@K against K, one panel per vertical."""
    verticals = sorted({v for per_v in recall.values() for v in per_v}, key=lambda v: (v == "all", v))
    if not verticals:
        raise ValueError("recall_curves: no recall to draw (empty recall table)")
    fig, axes = plt.subplots(1, len(verticals), figsize=(3.6 * len(verticals), 3.4), squeeze=False)
    for ax, vertical in zip(axes[0], verticals, strict=True):
        for model, per_v in recall.items():
            if vertical in per_v:
                points = sorted((int(k), float(r)) for k, r in per_v[vertical].items())
                ax.plot([k for k, _ in points], [r for _, r in points], marker="o", label=model)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_title(vertical)
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall@K")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("recall@K on the evaluation sessions (clicked documents as targets)")
    return _save(fig, path)


def front_2d(scanned: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both scanned share (lower) and accuracy (higher),
    ordered by scanned share (ties on scanned: the most accurate one)."""
    order = sorted(range(len(scanned)), key=lambda i: (scanned[i], -accuracy[i]))
    front, best = [], float("-inf")
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def ann_pareto(points: Sequence[Mapping[str, Any]], target: Mapping[str, Any], key: str, path: Path) -> Path:
    """`ann_figure` written to `path`."""
    return _save(ann_figure(points, target, key), path)


def ann_figure(points: Sequence[Mapping[str, Any]], target: Mapping[str, Any], key: str) -> Figure:
    """The tuner's operating points (ebr/ann/quantize.py: OperatingPoint as dicts) of embedding `key`:
    accuracy (recall@K of the targets, else 1-recall@r) against % of documents scanned, one colour per index
    type with its 2-D Pareto front as a line, the target threshold dashed and the chosen point starred."""
    if not points:
        raise ValueError(f"ann_pareto: no operating points for {key!r}")
    accuracy = "recall" if target.get("metric") == "recall_at_k" else "one_recall"
    label = f"recall@{target.get('k')}" if accuracy == "recall" else f"1-recall@{target.get('one_recall_r')}"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for factory in sorted({p["factory"] for p in points}):
        pts = [p for p in points if p["factory"] == factory]
        xs, ys = [100 * p["scanned"] for p in pts], [float(p[accuracy]) for p in pts]
        (line,) = ax.plot([], [], marker="", label=factory)
        ax.scatter(xs, ys, s=18, color=line.get_color(), alpha=0.6)
        front = front_2d(xs, ys)
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color=line.get_color())
    chosen = [p for p in points if p.get("chosen")]
    for p in chosen:
        ax.scatter(
            [100 * p["scanned"]], [p[accuracy]], marker="*", s=260, color="black", zorder=5, label="chosen"
        )
    if target.get("threshold") is not None:
        ax.axhline(float(target["threshold"]), color="grey", linestyle="--", label="target")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("documents scanned per query")
    ax.set_ylabel(label)
    ax.set_title(f"ANN tuning of {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def loss_curves(training: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Per model, its training summary's `epoch_loss` (solid) and `epoch_val_loss` (dashed) per epoch; models
    without per-epoch losses (e.g. a frozen encoder) are left out."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = 0
    for model, stats in training.items():
        train, val = stats.get("epoch_loss") or [], stats.get("epoch_val_loss") or []
        if not train and not val:
            continue
        (line,) = ax.plot(range(1, len(train) + 1), train, marker=".", label=f"{model} train")
        if val:
            ax.plot(
                range(1, len(val) + 1),
                val,
                linestyle="--",
                marker="x",
                color=line.get_color(),
                label=f"{model} validation",
            )
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no model trained", ha="center", va="center", transform=ax.transAxes)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(left=0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("triplet loss")
    ax.set_title("Training and validation loss per epoch")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    return _save(fig, path)


def gate_rows(checks: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float, bool]]:
    """(label, candidate value, threshold, passed) of each measured rule (a vertical without gate sessions
    has no value and is left out)."""
    return [
        (
            f"{c['vertical']} {c['rule']} ({c['metric']})",
            float(c["value"]),
            float(c["threshold"]),
            c["passed"],
        )
        for c in checks
        if c.get("value") is not None and c.get("threshold") is not None
    ]


def gate_rules(checks: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """`gate_figure` written to `path`."""
    return _save(gate_figure(checks), path)


def gate_figure(checks: Sequence[Mapping[str, Any]]) -> Figure:
    """The gate's checks (GateResult.to_dict()["checks"]) as one bar per rule, its threshold a black tick."""
    rows = gate_rows(checks)
    fig, ax = plt.subplots(figsize=(6.8, 0.9 + 0.34 * max(len(rows), 1)))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [r[1] for r in rows], color=[PASS if r[3] else FAIL for r in rows], height=0.6)
    ax.scatter([r[2] for r in rows], ys, marker="|", s=400, color="black", zorder=5, label="threshold")
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("candidate recall (bar: green pass, red fail); threshold (black tick)")
    ax.set_title("Recall gate: each rule against its threshold")
    return fig


def sweep_figure(table: pd.DataFrame, model: str) -> Figure:
    """recall@10 against margin, one panel per vertical on one shared y-axis, one line per easy:hard ratio;
    with several seeds the line is their mean and a band spans their min to max."""
    data = table[table["model"] == model]
    verticals = sorted(data["vertical"].unique())
    seeds = data["seed"].nunique()
    fig = Figure(figsize=(4 * len(verticals), 3.5))  # no pyplot: the caller owns the figure
    axes = fig.subplots(1, len(verticals), squeeze=False, sharey=True)[0]
    for ax, vertical in zip(axes, verticals, strict=True):
        part = data[data["vertical"] == vertical]
        for ratio, line in part.groupby("easy_hard_ratio"):
            stats = line.groupby("margin")["recall_at_10"].agg(["mean", "min", "max"]).sort_index()
            (drawn,) = ax.plot(stats.index, stats["mean"], marker="o", label=f"easy:hard {ratio:g}")
            if seeds > 1:
                ax.fill_between(stats.index, stats["min"], stats["max"], color=drawn.get_color(), alpha=0.2)
        ax.set_title(vertical)
        ax.set_xlabel("margin")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@10" + (f" (mean, min-max of {seeds} seeds)" if seeds > 1 else ""))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Sweep: {model}")
    return fig


def sweep_recall(table: pd.DataFrame, model: str, path: Path) -> Path:
    """`sweep_figure` written to `path` as a PNG."""
    return _save(sweep_figure(table, model), path)
