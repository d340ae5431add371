"""The retrain flow end to end on the tiny world: real DuckDB, Lightning, faiss, Prefect (test harness)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ebr import home, registry
from ebr.cli import main
from ebr.evaluation.gate import GateFailedError
from ebr.flows.retrain import parameter_overrides, retrain
from ebr.steps.resume import DONE

SMOKE = ["experiment=smoke"]
DATASET = "sim-tiny-s7"  # the smoke experiment's world: its own dataset


def test_parameters_become_overrides() -> None:
    assert parameter_overrides(None, None, None, None, None, None) == []
    assert parameter_overrides(None, None, None, None, None, None, "team-a") == ["data.dataset=team-a"]
    out = parameter_overrides("tiny", "/logs", 0.3, 10.0, 2, 0.5)
    assert out[:5] == [
        "data.scale=tiny",
        "data.logs_dir=/logs",
        "model.margin=0.3",
        "mining.easy_hard_ratio=10.0",
        "train.epochs=2",
    ]
    assert "gate.floor=0.5" in out


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_harness")
def test_retrain_publishes_resumes_and_gate_blocks(ebr_home: Path) -> None:
    report = retrain(margin=0.3, overrides=SMOKE)
    run_dir = Path(report["run_dir"])
    assert report["gate"]["passed"], report["gate"]["reason"]
    assert report["published_version"] == "v0001" == registry.served_version(DATASET)
    assert report["dataset"] == report["config"]["data"]["dataset"] == DATASET
    assert run_dir.parent == home.runs_dir(DATASET)
    for model in ("incumbent", "bm25", "text", "unified", "unified_ohnm"):
        assert set(report["recall"][model]) == {"people", "groups", "events", "all"}
        assert set(report["recall"][model]["all"]) == {"1", "10", "50", "100"}
    assert report["config"]["model"]["margin"] == 0.3
    assert report["mining"][-1]["easy_hard_ratio"] == pytest.approx(100.0)
    assert report["ann_operating_points"]
    assert json.loads((run_dir / "report.json").read_text())["run_id"] == report["run_id"]
    assert (run_dir / "config.yaml").is_file()
    manifest = registry.verify_version(registry.served_version_dir(DATASET))

    # the published version serves: its query tower encodes a real query and the engine returns JSON hits
    served = manifest["serving"]["verticals"]
    assert set(served) == {"people", "groups", "events"} and all(v["calibrated"] for v in served.values())
    assert report["serving"]["verticals"] == served  # the templates the gate measured are the ones served
    key = served["groups"]["key"]
    expr = f"(and (term vertical:groups) (nn {key} :k 20 :nprobe 16))"
    args = ["--dataset", DATASET, "--query-text", "running club", "--searcher", "1", "--k", "5", "--json"]
    found = CliRunner().invoke(main, ["search", "--expr", expr, *args])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output.strip().splitlines()[-1])
    assert 0 < len(hits) <= 5 and all({"doc_id", "score"} <= set(h) for h in hits)
    assert all(-1.0 <= h["score"] <= 1.0 for h in hits)

    # the vertical's template, as `ebr search --vertical` runs it, answers too
    templated = CliRunner().invoke(main, ["search", "--vertical", "groups", *args])
    assert templated.exit_code == 0 and json.loads(templated.output.strip().splitlines()[-1])

    # resume: a finished run recomputes nothing; a lost step is redone from its inputs
    (run_dir / "evaluate" / DONE).unlink()
    resumed = retrain(resume=report["run_id"], overrides=SMOKE, publish=False)
    assert resumed["recall"] == report["recall"]
    # resuming a run that published publishes nothing new, even when its publish step must run again
    (run_dir / "publish" / DONE).unlink()
    again = retrain(resume=report["run_id"], overrides=SMOKE)
    assert again["published_version"] == "v0001" and registry.served_version(DATASET) == "v0001"
    assert [p.name for p in home.versions_dir(DATASET).iterdir() if p.name.startswith("v")] == ["v0001"]
    assert json.loads((run_dir / "train" / DONE).read_text())["models"].keys() == {"text"}  # unified: mining

    # a gate that cannot pass fails the run with a one-line reason and publishes nothing
    with pytest.raises(GateFailedError, match=r"vertical=\w+ recall@50=[0-9.]+ < floor 0.9999"):
        retrain(gate_floor=0.9999, overrides=[*SMOKE, "gate.ndcg.tolerance=null"])  # the floor's message
    assert registry.served_version(DATASET) == "v0001"

    versions = CliRunner().invoke(main, ["versions", "--dataset", DATASET, "--json"])
    assert versions.exit_code == 0, versions.output
    listed = json.loads(versions.output)
    assert [v["version"] for v in listed if v["served"]] == ["v0001"]


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_harness")
def test_dask_runner_gives_the_local_runners_results(ebr_home: Path) -> None:
    """The batch steps' shards on a dask.distributed LocalCluster (through prefect-dask) give the same
    embeddings, mined tables and recall table as local threads."""
    shards = ["runner.shard_rows=500", "mining.block_size=300", "eval.query_block=200"]  # several per step
    local = retrain(overrides=[*SMOKE, *shards, "runner=local"], publish=False)
    dask = retrain(overrides=[*SMOKE, *shards, "runner=dask", "runner.cluster.n_workers=2"], publish=False)
    assert (local["runner"], dask["runner"]) == ("threads", "dask")
    assert dask["mining"] == local["mining"]
    assert dask["recall"] == local["recall"]
    for step, model in (("train", "text"), ("mine", "unified_ohnm")):
        a, b = (np.load(Path(r["run_dir"]) / step / "embeddings" / f"{model}.npy") for r in (local, dask))
        assert np.array_equal(a, b)
