"""A Hydra sweep (`python -m ebr.flows.retrain -m ...`): its jobs' flow run names and tags, and one comparison
of every job's recall when it ends.

`sweep_labels` names and tags each job's `retrain` flow run by the sweep, the job and its swept values
(ebr.flows.retrain.main). `SweepSummary` is a Hydra callback (conf/retrain.yaml, hydra.callbacks). It collects
each job's report (the job folder's report.json, written by ebr.flows.retrain.main, so grid and Optuna sweeps
alike) and, when the sweep ends, runs the flow `sweep-summary`: the table goes to DuckDB (`sweep_results` of
the jobs' dataset), to the sweep folder as sweep.md and sweep-recall.png (recall@10 per vertical against
margin on one y-axis, one line per easy:hard ratio, the mean and a min-max band when several seeds ran), and
to that flow run's artifacts `sweep-comparison` (the table) and `picture-sweep-recall` (the plot, embedded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import prefect
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from ebr import home
from ebr.evaluation import plots
from ebr.flows.retrain import picture

log = logging.getLogger(__name__)

K = "10"


def sweep_arguments(arguments: Sequence[str], sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """What the sweeper expands into jobs: its `hydra.sweeper.params` (key=value, as the sweepers read them)
    and the command line's overrides (`arguments`, e.g. sys.argv[1:]; flags are left out)."""
    params = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    return params + [a for a in arguments if "=" in a and not a.startswith("-")]


def sweep_labels(
    sweep_id: str, job: int, job_overrides: Sequence[str], arguments: Sequence[str]
) -> tuple[str, list[str]]:
    """The flow run name and tags of sweep job `job`: `sweep-<id>-job<n>-<key>=<value>...` over the overrides
    the sweep varies (those `arguments` give as a sweep: `a=1,2`, `range(..)`, Optuna's `interval(..)`), keys
    shortened to their last part; tags `sweep:<id>`, `job:<n>` and each swept `key=value` (whole key)."""
    parser = OverridesParser.create()
    swept = {o.key_or_group for o in parser.parse_overrides(list(arguments)) if o.is_sweep_override()}
    values = [
        (o.key_or_group, o.get_value_element_as_str())
        for o in parser.parse_overrides(list(job_overrides))
        if o.key_or_group in swept
    ]
    name = f"sweep-{sweep_id}-job{job}" + "".join(f"-{k.rsplit('.', 1)[-1]}={v}" for k, v in values)
    return name, [f"sweep:{sweep_id}", f"job:{job}", *(f"{k}={v}" for k, v in values)]


def job_rows(sweep_id: str, job: int, report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model and vertical of a job's report: its knobs, its gate verdict, the recall, its seed
    and dataset."""
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
                    "seed": int(cfg["seed"]),
                    "dataset": cfg["data"]["dataset"],
                }
            )
    return rows


def comparison_markdown(table: pd.DataFrame, model: str) -> str:
    """recall@10 per vertical (columns) per setting (rows) of one model; the mean over seeds when several."""
    data = table[table["model"] == model]
    pivot = data.pivot_table(index=["margin", "easy_hard_ratio"], columns="vertical", values="recall_at_10")
    seeds = data["seed"].nunique()
    lines = [
        f"Sweep: recall@10 of `{model}` per vertical" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
        "",
        "| margin | easy:hard | " + " | ".join(pivot.columns) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in pivot.columns) + " |",
    ]
    for (margin, ratio), row in pivot.iterrows():
        lines.append(f"| {margin:g} | {ratio:g} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def store(table: pd.DataFrame) -> None:
    """Append the sweep's rows to `sweep_results` in the DuckDB of each job's dataset."""
    for dataset, rows in table.groupby("dataset"):
        path = home.db_path(str(dataset))
        path.parent.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(path)) as con:
            con.register("sweep_rows", rows)
            con.execute("CREATE TABLE IF NOT EXISTS sweep_results AS SELECT * FROM sweep_rows LIMIT 0")
            con.execute("INSERT INTO sweep_results BY NAME SELECT * FROM sweep_rows")


@flow(name="sweep-summary", log_prints=True)
def sweep_summary(rows: list[dict[str, Any]], sweep_dir: str, model: str) -> str:
    """The comparison of a sweep's jobs (rows: `job_rows` of each): sweep.md, sweep-recall.png, DuckDB
    `sweep_results`, and this flow run's artifacts `sweep-comparison` and `picture-sweep-recall`."""
    table = pd.DataFrame(rows)
    out = Path(sweep_dir)
    model = model if model in set(table["model"]) else table["model"].iloc[0]
    markdown = comparison_markdown(table, model)
    (out / "sweep.md").write_text(markdown)
    png = plots.sweep_recall(table, model, out / "sweep-recall.png")
    store(table)
    create_markdown_artifact(key="sweep-comparison", markdown=markdown, description=str(out))
    picture(png, f"Sweep {out.name}: recall@10 of {model} per vertical against margin")
    print(f"sweep comparison: {out / 'sweep.md'}, {png}, DuckDB table sweep_results")
    return markdown


class SweepSummary(Callback):
    """Collects the jobs' reports during a multirun and runs `sweep_summary` when it ends."""

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
        sweep_id = Path(config.hydra.sweep.dir).name
        summary = sweep_summary.with_options(flow_run_name=lambda: f"sweep-{sweep_id}-summary")
        with prefect.tags(f"sweep:{sweep_id}"):
            summary(rows=self.rows, sweep_dir=str(config.hydra.sweep.dir), model=self.model)
