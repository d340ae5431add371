"""The end of a Hydra sweep (`python -m ebr.flows.retrain -m ...`): one comparison of every job's recall.

`SweepSummary` is a Hydra callback (conf/retrain.yaml, hydra.callbacks). It collects each job's report (the
job folder's report.json, written by ebr.flows.retrain.main, so grid and Optuna sweeps alike) and,
when the sweep ends, writes the table to DuckDB (`sweep_results`), to the sweep folder as sweep.md and
recall.png (recall@10 per vertical against margin, one line per easy:hard ratio), and as a Prefect markdown
artifact `sweep-comparison`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ebr import home

log = logging.getLogger(__name__)

K = "10"


def job_rows(sweep_id: str, job: int, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per vertical of a job's report: its knobs and the served models' recall."""
    cfg = report["config"]
    rows = []
    for model, per_vertical in report["recall"].items():
        for vertical, per_k in per_vertical.items():
            rows.append(
                {
                    "sweep_id": sweep_id,
                    "job": job,
                    "run_id": report["run_id"],
                    "margin": float(cfg["model"]["margin"]),
                    "easy_hard_ratio": float(cfg["mining"]["easy_hard_ratio"]),
                    "model": model,
                    "vertical": vertical,
                    "recall_at_10": per_k.get("10"),
                    "recall_at_100": per_k.get("100"),
                    "gate_passed": report["gate"]["passed"],
                }
            )
    return rows


def comparison_markdown(table: pd.DataFrame, model: str) -> str:
    """recall@10 per vertical (columns) per setting (rows) of one model."""
    pivot = table[table["model"] == model].pivot_table(
        index=["margin", "easy_hard_ratio"], columns="vertical", values="recall_at_10"
    )
    lines = [
        f"Sweep: recall@10 of `{model}` per vertical",
        "",
        "| margin | easy:hard | " + " | ".join(pivot.columns) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in pivot.columns) + " |",
    ]
    for (margin, ratio), row in pivot.iterrows():
        lines.append(f"| {margin:g} | {ratio:g} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, model: str, path: Path) -> Path:
    """recall@10 against margin, one panel per vertical, one line per easy:hard ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = table[table["model"] == model]
    verticals = sorted(data["vertical"].unique())
    fig, axes = plt.subplots(1, len(verticals), figsize=(4 * len(verticals), 3.5), squeeze=False)
    for ax, vertical in zip(axes[0], verticals, strict=True):
        part = data[data["vertical"] == vertical]
        for ratio, line in part.groupby("easy_hard_ratio"):
            line = line.sort_values("margin")
            ax.plot(line["margin"], line["recall_at_10"], marker="o", label=f"easy:hard {ratio:g}")
        ax.set_title(vertical)
        ax.set_xlabel("margin")
        ax.set_ylabel("recall@10")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Sweep: {model}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def store(table: pd.DataFrame) -> None:
    """Append the sweep's rows to `sweep_results` in the home's DuckDB."""
    with duckdb.connect(str(home.db_path())) as con:
        con.register("sweep_rows", table)
        con.execute("CREATE TABLE IF NOT EXISTS sweep_results AS SELECT * FROM sweep_rows LIMIT 0")
        con.execute("INSERT INTO sweep_results SELECT * FROM sweep_rows")


class SweepSummary(Callback):
    """Collects the jobs' reports during a multirun and writes the comparison when it ends."""

    def __init__(self, model: str = "unified_ohnm") -> None:
        self.model = model
        self.rows: list[dict[str, Any]] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        report = Path(config.hydra.runtime.output_dir) / "report.json"
        if job_return.status != JobStatus.COMPLETED or not report.is_file():
            log.warning("sweep job %s failed: not in the comparison", job_return.overrides)
            return
        sweep_id = Path(config.hydra.sweep.dir).name
        self.rows += job_rows(sweep_id, int(config.hydra.job.num), json.loads(report.read_text()))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.rows:
            return
        from prefect.artifacts import create_markdown_artifact

        table = pd.DataFrame(self.rows)
        out = Path(config.hydra.sweep.dir)
        model = self.model if self.model in set(table["model"]) else table["model"].iloc[0]
        markdown = comparison_markdown(table, model)
        (out / "sweep.md").write_text(markdown)
        plot(table, model, out / "recall.png")
        store(table)
        create_markdown_artifact(key="sweep-comparison", markdown=markdown, description=str(out))
        print(f"sweep comparison: {out / 'sweep.md'}, {out / 'recall.png'}, DuckDB table sweep_results")
