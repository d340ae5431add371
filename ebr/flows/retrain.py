"""Prefect flow `retrain`: logs -> ingest -> train -> validated mining -> evaluate -> ensembles and ANN tuning
-> serving (templates calibrated through the engine, candidate staged) -> recall gate -> publication. Each
task is one module of ebr/steps/; this module only wires them.

    ebr retrain [HYDRA_OVERRIDES...] [--json]
    python -m ebr.flows.retrain [HYDRA_OVERRIDES...]          # -m for a Hydra sweep, one flow run per job

Every run writes runs/<run_id>/ (config.yaml, one folder per step, report.json). Re-running with
`resume=<run_id>` skips the steps that finished.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import hydra
from omegaconf import DictConfig, OmegaConf
from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from ebr import home
from ebr.config import config_from_container, load_config
from ebr.contracts.docs import data_docs_index
from ebr.evaluation import plots
from ebr.evaluation.gate import GateFailedError, GateResult
from ebr.flows.ingest import data_docs_link, ingest_with_docs, io_failure
from ebr.io import atomic_write_text
from ebr.runners import Shards, open_shards
from ebr.runs import start_run
from ebr.steps.ensembles import ensembles_and_index
from ebr.steps.evaluate import evaluate_models
from ebr.steps.features import features_for
from ebr.steps.gate import run_gate
from ebr.steps.logs import world_dir
from ebr.steps.mine import mine_and_train
from ebr.steps.publish import publish_candidate
from ebr.steps.query_policy import policy_markdown, train_query_policy
from ebr.steps.ranker import ranker_markdown, train_ranker
from ebr.steps.relevance import filter_markdown, train_relevance_filter
from ebr.steps.resume import keep_stage, run_step
from ebr.steps.serving import choose_serving, index_selection
from ebr.steps.train import train_models

log = logging.getLogger(__name__)

# I/O failures only (a locked database, a disk error); contracts, the gate and config errors fail at once
IO_RETRIES = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": io_failure,
    "cache_policy": NO_CACHE,
}


@task(name="logs", **IO_RETRIES)
def logs_task(cfg: DictConfig, run_dir: Path, shards: Shards) -> dict[str, Any]:
    return run_step(run_dir, "logs", lambda out: {"logs_dir": str(world_dir(cfg, shards))})


@task(name="ingest", **IO_RETRIES)
def ingest_task(cfg: DictConfig, run_dir: Path, logs_dir: str, run_id: str) -> dict[str, Any]:
    def body(out: Path) -> dict[str, Any]:
        db_path = home.db_path(cfg.data.dataset)
        result = ingest_with_docs(Path(logs_dir), db_path, cfg.ingest, f"{run_id}-ingest")
        return result.summary() | {"contracts": result.contracts}

    summary = run_step(run_dir, "ingest", body)
    create_table_artifact(
        key="ingest-counts",
        table=[{"table": t, **c} for t, c in summary["tables"].items()],
        description=f"Ingestion of {logs_dir}: rows read, loaded, quarantined, skipped",
    )
    if summary.get("data_docs"):
        data_docs_link("ingest-data-docs", Path(summary["data_docs"]))
    return summary


@task(name="train-towers", timeout_seconds=3600, cache_policy=NO_CACHE)
def train_task(cfg: DictConfig, run_dir: Path, features: Any, shards: Shards) -> dict[str, Any]:
    summary = run_step(run_dir, "train", lambda out: train_models(cfg, features, out, shards))
    create_table_artifact(
        key="training-summary",
        table=[{"model": m, **_flat(i["training"])} for m, i in summary["models"].items()],
        description="Towers trained (Lightning): epochs, seconds, triplets/s, final loss, peak RSS",
    )
    training = {m: i["training"] for m, i in summary["models"].items()}
    picture(plots.loss_curves(training, run_dir / "pictures" / "loss-towers.png"), "Loss per epoch (towers)")
    return summary


@task(name="mine-and-train", timeout_seconds=3600, cache_policy=NO_CACHE)
def mine_task(cfg: DictConfig, run_dir: Path, features: Any, run_id: str, shards: Shards) -> dict[str, Any]:
    summary = run_step(
        run_dir,
        "mine",
        lambda out: mine_and_train(cfg, home.db_path(cfg.data.dataset), features, out, run_id, shards),
    )
    create_table_artifact(
        key="mined-tables",
        table=summary["tables"],
        description="Validated mined tables per round: realised counts and easy:hard ratio",
    )
    data_docs_link("mining-data-docs", data_docs_index(home.db_path(cfg.data.dataset)))
    training = {m: i["training"] for m, i in summary["models"].items() if "training" in i}
    picture(plots.loss_curves(training, run_dir / "pictures" / "loss-mined.png"), "Loss per epoch (mined)")
    return summary


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    cfg: DictConfig, run_dir: Path, features: Any, models: dict, shards: Shards
) -> dict[str, Any]:
    report = run_step(run_dir, "evaluate", lambda out: evaluate_models(cfg, features, models, out, shards))
    create_table_artifact(
        key="recall-table",
        table=[
            {"model": m, "vertical": v, **{f"recall@{k}": round(r, 4) for k, r in per_k.items()}}
            for m, per_v in report["recall"].items()
            for v, per_k in per_v.items()
        ],
        description="recall@K on held-out sessions (clicked documents as targets), exact KNN",
    )
    picture(plots.recall_curves(report["recall"], run_dir / "pictures" / "recall.png"), "recall@K per model")
    return report


@task(name="ensembles-and-ann", cache_policy=NO_CACHE)
def ensemble_task(
    cfg: DictConfig, run_dir: Path, features: Any, models: dict, shards: Shards
) -> dict[str, Any]:
    summary = run_step(
        run_dir, "ensembles", lambda out: ensembles_and_index(cfg, features, models, out, shards)
    )
    create_markdown_artifact(
        key="ann-operating-points",
        markdown="\n\n".join(
            [f"## Retrievers (tuning sessions)\n\n{(run_dir / 'ensembles' / 'ensembles.md').read_text()}"]
            + [f"## ANN tuning of `{k}`\n\n{p['table3']}" for k, p in summary["operating_points"].items()]
        ),
        description="Ensembles, cascades and ANN operating points (exact KNN vs quantised)",
    )
    for key, point in summary["operating_points"].items():
        if "points" not in point:  # a step finished before the points were kept (resume of an older run)
            continue
        path = run_dir / "pictures" / f"ann-{key}.png"
        picture(plots.ann_pareto(point["points"], point["target"], key, path), f"ANN Pareto front of {key}")
    return summary


@task(name="serving", cache_policy=NO_CACHE)
def serving_task(
    cfg: DictConfig,
    run_dir: Path,
    features: Any,
    models: dict,
    ensembles: dict,
    evaluation: dict,
    run_id: str,
    shards: Shards,
) -> dict[str, Any]:
    def body(out: Path) -> dict[str, Any]:
        index_dir, db_path = run_dir / "ensembles", home.db_path(cfg.data.dataset)
        return choose_serving(
            cfg, db_path, features, models, ensembles, index_dir, out, run_id, shards, evaluation
        )

    summary = run_step(run_dir, "serving", body)
    create_table_artifact(
        key="serving-templates",
        table=[
            {
                "vertical": v,
                **{k: t.get(k) for k in ("retriever", "expr", "recall", "reference", "scanned", "met")},
            }
            for v, t in summary["serving"]["verticals"].items()
        ],
        description="Per vertical: the retriever served and its template, calibrated through the engine on "
        "the tuning sessions (recall against the model's exact top-K, share of documents scanned)",
    )
    if selection := summary.get("index_selection"):  # absent in a serving step finished before it existed
        create_table_artifact(
            key="index-selection",
            table=[{"vertical": v} | c for v, c in selection["verticals"].items()],
            description="Per vertical: the index selection predicate (conf/index_selection) and the "
            "documents in the (nn) fields of the candidate, of all the vertical's documents",
        )
    return summary


@task(name="query-policy", cache_policy=NO_CACHE)
def query_policy_task(cfg: DictConfig, run_dir: Path, features: Any, serving: dict) -> dict[str, Any]:
    def body(out: Path) -> dict[str, Any]:
        db_path = home.db_path(cfg.data.dataset)
        return train_query_policy(cfg, db_path, features, Path(serving["candidate"]), out)

    summary = run_step(run_dir, "query_policy", body)
    keep_stage(Path(serving["candidate"]), "query_policy", run_dir / "query_policy" / "stage", summary)
    create_markdown_artifact(
        key="query-policy",
        markdown=policy_markdown(summary),
        description="Query selection: the rules on, trained on the train sessions, staged with the candidate",
    )
    return summary


@task(name="ranker", cache_policy=NO_CACHE)
def ranker_task(cfg: DictConfig, run_dir: Path, features: Any, serving: dict) -> dict[str, Any]:
    def body(out: Path) -> dict[str, Any]:
        db_path = home.db_path(cfg.data.dataset)
        return train_ranker(cfg, db_path, features, Path(serving["candidate"]), out)

    summary = run_step(run_dir, "ranker", body)
    keep_stage(Path(serving["candidate"]), "ranker", run_dir / "ranker" / "stage", summary)
    create_markdown_artifact(
        key="ranker",
        markdown=ranker_markdown(summary),
        description="Ranking stage: lambdarank on the train sessions' clicks, NDCG@10 per embedding variant",
    )
    return summary


@task(name="relevance-filter", cache_policy=NO_CACHE)
def relevance_filter_task(cfg: DictConfig, run_dir: Path, serving: dict) -> dict[str, Any]:
    def body(out: Path) -> dict[str, Any]:
        db_path = home.db_path(cfg.data.dataset)
        return train_relevance_filter(cfg, db_path, Path(serving["candidate"]), out)

    summary = run_step(run_dir, "relevance_filter", body)
    keep_stage(
        Path(serving["candidate"]), "relevance_filter", run_dir / "relevance_filter" / "stage", summary
    )
    create_markdown_artifact(
        key="relevance-filter",
        markdown=filter_markdown(summary),
        description="Relevance filter of EBR results: LightGBM on rater labels, threshold at target recall",
    )
    return summary


@task(name="recall-gate", cache_policy=NO_CACHE)
def gate_task(
    cfg: DictConfig, run_dir: Path, features: Any, models: dict, serving: dict, shards: Shards
) -> GateResult:
    candidate = Path(serving["candidate"])
    db_path = home.db_path(cfg.data.dataset)
    result = run_gate(cfg, db_path, features, models, candidate, run_dir / "gate", shards)
    create_markdown_artifact(key="recall-gate", markdown=result.markdown(), description=result.reason)
    checks = result.to_dict()["checks"]
    picture(plots.gate_rules(checks, run_dir / "pictures" / "gate.png"), "Gate rules against thresholds")
    return result


@task(name="publish", **IO_RETRIES)
def publish_task(run_dir: Path, serving: dict, gate: GateResult, run_id: str, dataset: str) -> str:
    summary = run_step(
        run_dir,
        "publish",
        lambda out: {"version": publish_candidate(Path(serving["candidate"]), gate, run_id, dataset)},
    )
    create_markdown_artifact(
        key="publication", markdown=f"Published **{summary['version']}** (now served)\n\n{gate.reason}"
    )
    return summary["version"]


@flow(name="retrain", log_prints=True)
def retrain(
    scale: Literal["tiny", "small", "large"] | None = None,
    logs_dir: str | None = None,
    dataset: str | None = None,
    margin: float | None = None,
    easy_hard_ratio: float | None = None,
    epochs: int | None = None,
    gate_floor: float | None = None,
    publish: bool = True,
    resume: str | None = None,
    overrides: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Retrain the towers on the logs and publish a new index version if the recall gate passes.

    Args:
        scale: The simulated world used when logs_dir is empty (empty: the config's data.scale, small).
        logs_dir: A folder of your log tables to ingest and train on (data.logs_dir).
        dataset: The dataset the run reads and writes, with its own database, runs and versions
            (data.dataset; empty: the folder name of logs_dir, else sim-<scale>-s<seed>).
        margin: The triplet loss margin (model.margin).
        easy_hard_ratio: Random (easy) negatives per hard negative in mining (mining.easy_hard_ratio).
        epochs: Training epochs per tower (train.epochs).
        gate_floor: The recall floor of every vertical at the recall gate (gate.floor).
        publish: Publish the new version when the recall gate passes.
        resume: A run id of this dataset to resume from its last finished step.
        overrides: Any Hydra overrides (key=value), applied after the parameters above.
        config: A whole resolved config (the Hydra entry point's), instead of the parameters above.
    """
    params = parameter_overrides(scale, logs_dir, margin, easy_hard_ratio, epochs, gate_floor, dataset)
    params += list(overrides or [])
    if config is not None and params:
        raise ValueError(f"retrain: give either a config or parameters, not both (got {params})")
    cfg = config_from_container(config) if config is not None else load_config(params)
    return run_retrain(cfg, publish=publish, run_id=resume)


def parameter_overrides(
    scale: str | None,
    logs_dir: str | None,
    margin: float | None,
    easy_hard_ratio: float | None,
    epochs: int | None,
    gate_floor: float | None,
    dataset: str | None = None,
) -> list[str]:
    """The flow's typed parameters as Hydra overrides (None leaves the config's default)."""
    out = [f"data.scale={scale}"] if scale else []
    if logs_dir:
        out.append(f"data.logs_dir={logs_dir}")
    if dataset:
        out.append(f"data.dataset={dataset}")
    for key, value in (
        ("model.margin", margin),
        ("mining.easy_hard_ratio", easy_hard_ratio),
        ("train.epochs", epochs),
    ):
        if value is not None:
            out.append(f"{key}={value}")
    if gate_floor is not None:
        out.append(f"gate.floor={gate_floor}")
    return out


def run_retrain(cfg: DictConfig, publish: bool = True, run_id: str | None = None) -> dict[str, Any]:
    """The retrain steps in order; returns (and writes) the run's report. The Hydra key `publish=false`
    also stops publication (`ebr retrain publish=false` as `--no-publish`)."""
    with ebr_logs_to_prefect():
        return _run_retrain(cfg, publish and cfg.publish is not False, run_id)


def _run_retrain(cfg: DictConfig, publish: bool, run_id: str | None) -> dict[str, Any]:
    dataset = home.check_dataset(cfg.data.dataset)  # a config error (data.dataset) before anything is written
    if hint := home.legacy_hint(dataset):
        print(f"note: {hint}")
    run = start_run(cfg, "retrain", dataset, run_id)
    create_markdown_artifact(
        key="resolved-config", markdown=f"```yaml\n{OmegaConf.to_yaml(cfg)}```", description=run.run_id
    )
    print(f"run {run.run_id}: {run.path}")
    report: dict[str, Any] = {"run_id": run.run_id, "run_dir": str(run.path), "published_version": None}
    report["runner"] = str(cfg.runner.kind)
    report["dataset"] = dataset
    # batch-step shards: threads here, or a Dask cluster (conf/runner/); long work reports its progress
    with open_shards(cfg.runner, ProgressArtifacts()) as shards:
        logs = logs_task(cfg, run.path, shards)
        report["ingest"] = ingest_task(cfg, run.path, logs["logs_dir"], run.run_id)
        features = features_for(cfg, home.db_path(dataset))
        index_selection(cfg, home.db_path(dataset), features)  # a bad predicate fails before training
        report["split"] = features.split.summary()
        report["features"] = features.stats
        trained = train_task(cfg, run.path, features, shards)
        mined = mine_task(cfg, run.path, features, run.run_id, shards)
        models = {name: info for step in (trained, mined) for name, info in step["models"].items()}
        report["training"] = {m: i["training"] for m, i in models.items() if "training" in i}
        report["mining"] = mined["tables"]
        evaluation = evaluate_task(cfg, run.path, features, models, shards)
        report["recall"] = evaluation["recall"]
        report["recall_intent"] = evaluation.get("recall_intent")
        ensembles = ensemble_task(cfg, run.path, features, models, shards)
        report["ensembles"] = ensembles["table"]
        report["ann_operating_points"] = {k: p["chosen"] for k, p in ensembles["operating_points"].items()}
        report["ann_tables"] = {k: p["table3"] for k, p in ensembles["operating_points"].items()}
        serving = serving_task(cfg, run.path, features, models, ensembles, evaluation, run.run_id, shards)
        report["serving"] = serving["serving"]
        report["calibration"] = serving["calibration"]
        report["query_policy"] = query_policy_task(cfg, run.path, features, serving)
        report["ranker"] = ranker_task(cfg, run.path, features, serving)
        report["relevance_filter"] = relevance_filter_task(cfg, run.path, serving)
        gate = gate_task(cfg, run.path, features, models, serving, shards)
    report["gate"] = {"passed": gate.passed, "reason": gate.reason, "checks": gate.to_dict()["checks"]}
    try:
        check_verdict(gate, publish, report)
        if publish:
            report["published_version"] = publish_task(run.path, serving, gate, run.run_id, dataset)
        else:  # nothing to publish: the gate is a verdict in the report, the flow run completes
            create_markdown_artifact(
                key="publication",
                markdown="Nothing published: publish=False (a sweep job, --no-publish or publish=false)\n\n"
                f"Verdict: {gate.reason}",
            )
            print(f"verdict (nothing published): {gate.reason}")
    finally:
        report["config"] = OmegaConf.to_container(cfg, resolve=True)
        atomic_write_text(run.path / "report.json", json.dumps(report, indent=2, default=str))
    print(f"report: {run.path / 'report.json'}")
    return report


def check_verdict(gate: GateResult, publish: bool, report: dict[str, Any]) -> None:
    """A run meant to publish whose gate failed fails: GateFailedError(reason), carrying the report (the CLI
    prints it). A run that publishes nothing (a sweep job, --no-publish) completes: its gate is a verdict."""
    if publish and not gate.passed:
        error = GateFailedError(gate.reason)
        error.report = report
        raise error


class ProgressArtifacts:
    """Progress reports (ebr/runners.py: Shards.report) as Prefect progress artifacts, one per piece of work
    (key `progress-<what>`), updated when they move by a percent or more (back to the start, too: a repeated
    piece of work, such as a later mining round's training, reuses its artifact), and as a log line (the
    terminal and the run's logs) each time a piece of work passes a multiple of `log_every` percent."""

    def __init__(self, log_every: int = 10) -> None:
        self.artifacts: dict[str, tuple[Any, float]] = {}
        self.log_every = log_every
        self.logged: dict[str, int] = {}

    def __call__(self, what: str, fraction: float) -> None:
        percent = round(100 * fraction, 1)
        self._log(what, percent)
        if what not in self.artifacts:
            key = "progress-" + artifact_key(what)
            self.artifacts[what] = (create_progress_artifact(percent, key=key, description=what), percent)
            return
        artifact, last = self.artifacts[what]
        if abs(percent - last) >= 1 or (percent == 100 and last < 100):
            update_progress_artifact(artifact, percent)
            self.artifacts[what] = (artifact, percent)

    def _log(self, what: str, percent: float) -> None:
        step = int(percent // self.log_every) * self.log_every
        last = self.logged.get(what)
        if last is None or step > last or step < last - self.log_every:  # a repeated piece of work restarts
            if last is not None or step > 0:
                log.info("%s: %d%%", what, step)
            self.logged[what] = step


def artifact_key(text: str) -> str:
    """`text` as a Prefect artifact key (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def picture(path: Path, description: str) -> None:
    """A PNG (runs/<run_id>/pictures/) as a markdown artifact keyed by its file name, the image embedded as
    a data URI (the UI's markdown renderer draws it as an <img>)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    create_markdown_artifact(
        key="picture-" + artifact_key(path.stem),
        markdown=f"![{path.stem}](data:image/png;base64,{data})\n\n`{path}`\n",
        description=description,
    )


@contextmanager
def ebr_logs_to_prefect() -> Iterator[None]:
    """For the `with` block, the `ebr.*` loggers' records from INFO up go to the Prefect API (the run's logs
    in the UI) as PREFECT_LOGGING_EXTRA_LOGGERS=ebr would send them, and by propagation once to the terminal
    (the root logger's console handler); records outside a run context (a shard thread) reach the terminal
    only. Nothing is added when the `ebr` logger already has Prefect's API handler (that setting given)."""
    logger = logging.getLogger("ebr")
    level, added = logger.level, None
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        added = APILogHandler()
        added.addFilter(lambda r: FlowRunContext.get() is not None or TaskRunContext.get() is not None)
        logger.addHandler(added)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if added is not None:
            logger.removeHandler(added)
        logger.setLevel(level)


def _flat(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}


# config_path absolute: `ebr retrain -m` calls main from its import, not as `python -m`
@hydra.main(config_path=str(home.conf_dir()), config_name="retrain", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any] | float:
    """Hydra entry point: each job of a sweep (-m) is one flow run, named and tagged by the sweep, the job and
    its swept values (ebr/flows/sweep.py: sweep_labels). Sweep jobs publish nothing unless `publish=true` is
    given (their gate is a verdict in the report); a single run publishes unless `publish=false`, and a gate
    that fails it fails the command. Writes the run's report to the job's output folder (read by the sweep's
    comparison callback) and returns it, or with `optimized_metric` set (an Optuna sweep,
    hparams_search=optuna) the value at that path of the report."""
    import sys
    from contextlib import nullcontext

    import prefect
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ebr.flows.sweep import sweep_arguments, sweep_labels

    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    publish = cfg.publish if cfg.publish is not None else not sweep
    flow_run, labels = retrain, nullcontext()
    if sweep:
        arguments = sweep_arguments(sys.argv[1:], hydra_cfg.sweeper.get("params"))
        sweep_id = Path(hydra_cfg.sweep.dir).name
        name, tags = sweep_labels(sweep_id, hydra_cfg.job.num, hydra_cfg.overrides.task, arguments)
        flow_run, labels = retrain.with_options(flow_run_name=lambda: name), prefect.tags(*tags)
    failed = None
    try:
        with labels:
            report = flow_run(publish=bool(publish), config=OmegaConf.to_container(cfg, resolve=True))
    except GateFailedError as exc:  # a run meant to publish whose gate failed: its flow run failed
        report, failed = exc.report, exc
    atomic_write_text(Path(hydra_cfg.runtime.output_dir) / "report.json", json.dumps(report, default=str))
    if failed is not None and not sweep:
        raise SystemExit(f"Error: {failed}")  # as `ebr retrain`: one line, exit status 1 (a sweep goes on)
    return report_metric(report, cfg.optimized_metric) if cfg.optimized_metric else report


def report_metric(report: dict[str, Any], path: str) -> float:
    """The number at a dotted path of a report, e.g. `recall.unified_ohnm.all.10`."""
    value: Any = report
    for key in str(path).split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"optimized_metric: {path!r} is not in the run's report (no {key!r})")
        value = value[key]
    return float(value)


def hydra_cli(args: list[str]) -> None:
    """`python -m ebr.flows.retrain ARGS`: Hydra's command line over `main` (overrides, -m, --cfg job, ...),
    with a temporary Prefect API when it runs flows; `ebr retrain -m` and `ebr retrain --cfg` call it."""
    import sys
    from contextlib import nullcontext

    from ebr.flows.prefect_api import temporary_api

    runs = not {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i"} & set(args)
    argv, sys.argv = sys.argv, [sys.argv[0], *args]  # Hydra (and sweep_arguments) read sys.argv
    try:
        with temporary_api() if runs else nullcontext():  # unless one is configured; it dies with us
            main()
    finally:
        sys.argv = argv


if __name__ == "__main__":
    import sys

    from ebr.logs import configure

    configure()
    hydra_cli(sys.argv[1:])
