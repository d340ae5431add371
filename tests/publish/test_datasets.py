"""Each dataset has its own versions, serving pointer, registry, runs and engine state: publishing, rolling
back and collecting in one leaves the other as it was."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from omegaconf import OmegaConf
from publish_pieces import make_pieces, make_world, passing_gate

from ebr import home, registry
from ebr.cli import main
from ebr.registry import catalogue, publication
from ebr.runs import start_run


def test_two_datasets_keep_their_own_versions_runs_and_serving(ebr_home: Path, tmp_path: Path) -> None:
    world = make_world(n_docs=120)
    for seed, dataset in ((1, "a"), (2, "a"), (3, "b")):
        pieces = make_pieces(world, tmp_path / str(seed), seed=seed)
        publication.publish_version(pieces, passing_gate(), {}, {}, f"run-{seed}", dataset)
    assert [v["version"] for v in catalogue.list_versions("a")] == ["v0001", "v0002"]
    assert [v["version"] for v in catalogue.list_versions("b")] == ["v0001"]  # names are per dataset
    assert (registry.served_version("a"), registry.served_version("b")) == ("v0002", "v0001")
    assert registry.verify_version(registry.served_version_dir("b"))["run_id"] == "run-3"
    assert catalogue.rollback("a", "v0001") == "v0002"
    assert registry.served_version("b") == "v0001"  # the other dataset's serving is untouched

    runner = CliRunner()
    listed = runner.invoke(main, ["versions", "--dataset", "b", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(v["version"], v["run_id"]) for v in json.loads(listed.stdout)] == [("v0001", "run-3")]
    gc = runner.invoke(main, ["gc", "--dataset", "a", "--json", "gc.keep_versions=0"])
    assert gc.exit_code == 0, gc.output
    assert json.loads(gc.stdout)["kept_versions"] == ["v0001", "v0002"]  # served and rollback target
    assert catalogue.version_folders("b") == ["v0001"]

    run = start_run(OmegaConf.create({"x": 1}), "retrain", "b")
    assert run.path.parent == home.runs_dir("b") == ebr_home / "datasets" / "b" / "runs"
    assert not home.runs_dir("a").exists()
    datasets = runner.invoke(main, ["datasets", "--json"])
    assert datasets.exit_code == 0, datasets.output
    found = {d["dataset"]: (d["served_version"], d["versions"]) for d in json.loads(datasets.stdout)}
    assert found == {"a": ("v0001", 2), "b": ("v0001", 1)}
