"""The flows' datasets and parameters: each log source resolves to its own dataset (the deployment's `-p
scale=tiny` and `-p dataset=NAME` included), every flow parameter is described in the run form, and a
deterministic failure (a contract) is not retried."""

from __future__ import annotations

from pathlib import Path

import pytest
from ingest.logs import clean_logs, run_ingest, write_logs  # tests/ingest/logs.py
from prefect.utilities.callables import parameter_schema

from ebr import home
from ebr.config import load_config
from ebr.flows.ingest import ingest
from ebr.flows.retrain import parameter_overrides, retrain


@pytest.mark.parametrize("flow", [retrain, ingest], ids=["retrain", "ingest"])
def test_every_flow_parameter_has_a_description_in_the_run_form(flow) -> None:
    schema = parameter_schema(flow.fn)  # what `to_deployment` gives the deployment's run form
    assert "dataset" in schema.properties
    missing = [name for name, p in schema.properties.items() if not p.get("description")]
    assert missing == [], f"{flow.name}: parameters without a description: {missing}"


@pytest.mark.parametrize(
    ("params", "dataset"),
    [
        ({}, "sim-small-s7"),
        ({"scale": "tiny"}, "sim-tiny-s7"),  # `prefect deployment run retrain/retrain -p scale=tiny`
        ({"dataset": "team-a"}, "team-a"),
        ({"logs_dir": "/data/Search_Logs"}, "search_logs"),  # a folder: its name, lowercased
        ({"logs_dir": "/data/search_logs", "dataset": "jobs"}, "jobs"),
    ],
)
def test_each_source_resolves_to_its_own_dataset(params: dict, dataset: str) -> None:
    args = [params.get(k) for k in ("scale", "logs_dir", "margin", "easy_hard_ratio", "epochs", "gate_floor")]
    cfg = load_config(parameter_overrides(*args, params.get("dataset")))
    assert cfg.data.dataset == dataset


def test_experiment_smoke_is_the_tiny_worlds_dataset() -> None:
    assert load_config(["experiment=smoke"]).data.dataset == "sim-tiny-s7"
    assert load_config(["experiment=smoke", "data.world_seed=3"]).data.dataset == "sim-tiny-s3"


def test_a_bad_dataset_name_is_one_line_naming_data_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^data\.dataset: 'Team A' is not a dataset name") as raised:
        home.check_dataset("Team A")
    assert "\n" not in str(raised.value)
    with pytest.raises(Exception, match=r"data\.dataset: the folder name 'my logs'"):
        load_config([f"data.logs_dir={tmp_path / 'my logs'}"])


@pytest.mark.usefixtures("prefect_harness")
def test_a_contract_failure_runs_the_ingest_task_once(ebr_home: Path, tmp_path: Path) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ebr.flows.retrain import ingest_task

    first = write_logs(tmp_path / "first", clean_logs())
    run_ingest(first, home.db_path("shared"))
    tables = clean_logs()
    tables["users"] = tables["users"].assign(name="Someone Else")  # the same keys, other content
    second = write_logs(tmp_path / "second", tables)
    cfg = load_config([f"data.logs_dir={second}", "data.dataset=shared"])

    @flow(name="ingest-once")
    def just_ingest() -> dict:
        return ingest_task(cfg, tmp_path / "run", str(second), "run-once")

    state = just_ingest(return_state=True)
    assert state.is_failed() and "key conflicts" in state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    [run] = [r for r in runs if r.name.startswith("ingest")]
    assert run.state.is_failed() and run.run_count == 1  # not retried: only I/O failures are
