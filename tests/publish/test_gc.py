"""Nothing deletes a version implicitly: reconciliation reports unknown and missing versions, `--adopt`
registers a folder, and only `ebr gc` deletes, by its retention policy (the policy itself tested without
a file system)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from publish_pieces import DATASET, make_pieces, make_world, passing_gate

from ebr import home, registry
from ebr.cli import gc as gc_cmd
from ebr.cli import rollback as rollback_cmd
from ebr.cli import versions as versions_cmd
from ebr.config import GcConfig, load_config, typed
from ebr.registry import catalogue, publication
from ebr.registry.gc import Deletion, Inventory, Run, collect, kept_versions, plan

ROOT = Path("/home")
POLICY = GcConfig(keep_versions=2, keep_runs=2, keep_checkpoints=1)


def _names(deletions: list[Deletion], kind: str) -> list[str]:
    return [d.name for d in deletions if d.kind == kind]


def test_the_policy_keeps_the_newest_the_served_and_the_rollback_target() -> None:
    inv = Inventory(versions=[f"v000{i}" for i in range(1, 8)], served="v0002", previous="v0001")
    assert kept_versions(inv, POLICY) == ["v0001", "v0002", "v0006", "v0007"]
    assert _names(plan(inv, POLICY, ROOT), "version") == ["v0003", "v0004", "v0005"]
    none_kept = GcConfig(keep_versions=0, keep_runs=0, keep_checkpoints=0)
    assert kept_versions(inv, none_kept) == ["v0001", "v0002"]  # served and previous, whatever the policy


def test_the_policy_never_deletes_unknown_folders_and_cleans_the_rest() -> None:
    ckpt = ROOT / "runs" / "retrain-20260102T000000-aaaa" / "unified" / "checkpoints" / "last.ckpt"
    inv = Inventory(
        versions=["v0001", "v0002", "v0003"],
        served="v0003",
        previous="v0002",
        unknown=["v0009"],
        leftovers=["v0000"],
        staging=[".staging-v0004-12-abcdef"],
        runs=[
            Run("retrain-20260101T000000-aaaa", "20260101T000000"),
            Run("retrain-20260102T000000-aaaa", "20260102T000000", (ckpt,)),
            Run("retrain-20260103T000000-aaaa", "20260103T000000", (ROOT / "runs" / "r3" / "x.ckpt",)),
        ],
        engine_states=["v0001", "v0003", "v0009", "candidate-retrain-20260103T000000-aaaa", "candidate-gone"],
    )
    out = plan(inv, POLICY, ROOT)
    assert _names(out, "staging") == [".staging-v0004-12-abcdef"]
    assert _names(out, "version") == ["v0000", "v0001"]  # v0009 (unknown) is never a candidate
    assert _names(out, "run") == ["retrain-20260101T000000-aaaa"]
    assert _names(out, "checkpoint") == [str(ckpt.relative_to(ROOT))]  # the newest run keeps its own
    assert _names(out, "engine_state") == ["candidate-gone", "v0001"]
    assert {d.path for d in out} >= {ROOT / "versions" / "v0001", ROOT / "engine" / "v0001"}
    with pytest.raises(ValueError, match="gc.keep_runs must be at least 0"):
        plan(inv, GcConfig(keep_versions=1, keep_runs=-1, keep_checkpoints=1), ROOT)


def test_the_gc_config_composes_under_its_schema() -> None:
    policy = typed(load_config(["gc.keep_runs=3"], config_name="gc/default").gc)
    assert isinstance(policy, GcConfig) and policy.keep_runs == 3 and policy.keep_versions == 5


@pytest.fixture
def three(ebr_home: Path, tmp_path: Path) -> list[str]:
    """A home with v0001..v0003 published (v0003 served)."""
    world = make_world(n_docs=120)
    return [
        publication.publish_version(
            make_pieces(world, tmp_path, seed=s), passing_gate(), {}, {}, f"run-{s}", DATASET
        ).version
        for s in (1, 2, 3)
    ]


def test_a_moved_database_deletes_nothing_and_adopt_restores(three: list[str]) -> None:
    """The reported bug: with the database moved aside, a rollback deleted v0001."""
    home.db_path(DATASET).rename(home.db_path(DATASET).with_suffix(".aside"))
    with pytest.raises(catalogue.UnknownVersionError, match=r"'v0001'.*--adopt"):
        catalogue.rollback(
            DATASET, "v0001"
        )  # the served v0003 is registered again; v0001 and v0002 are reported
    assert catalogue.version_folders(DATASET) == three and registry.served_version(DATASET) == "v0003"
    listed = {v["version"]: v["status"] for v in catalogue.list_versions(DATASET, verify=True)}
    assert listed == {"v0001": "unregistered", "v0002": "unregistered", "v0003": "published"}
    runner = CliRunner()
    out = runner.invoke(versions_cmd.command, ["--dataset", DATASET])
    assert "warning: v0001 is not in the registry (kept)" in out.output and "--adopt v0001" in out.output
    out = runner.invoke(versions_cmd.command, ["--dataset", DATASET, "--adopt", "v0001", "--json"])
    assert out.exit_code == 0, out.output
    assert {v["version"]: v["status"] for v in json.loads(out.stdout)}["v0001"] == "published"
    back = runner.invoke(rollback_cmd.command, ["--dataset", DATASET, "v0001"])
    assert back.exit_code == 0 and "serving v0001 (was v0003)" in back.output
    again = runner.invoke(versions_cmd.command, ["--dataset", DATASET, "--adopt", "v0001"])
    assert again.exit_code != 0 and "v0001 is already registered" in again.output
    # a corrupted folder is refused, one line naming the file
    target = home.versions_dir(DATASET) / "v0002" / "doc_ids.npy"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"x")
    bad = runner.invoke(versions_cmd.command, ["--dataset", DATASET, "--adopt", "v0002"])
    assert bad.exit_code != 0 and "cannot adopt v0002" in bad.output and "doc_ids.npy" in bad.output
    assert catalogue.version_folders(DATASET) == three


def test_a_registered_folder_gone_is_reported_missing(three: list[str]) -> None:
    shutil.rmtree(home.versions_dir(DATASET) / "v0001")
    with catalogue.locked(DATASET), catalogue.connect(DATASET) as con:
        assert catalogue.reconcile(con, DATASET)["missing"] == ["v0001"]
    assert {v["version"]: v["status"] for v in catalogue.list_versions(DATASET)}["v0001"] == "missing"
    out = CliRunner().invoke(versions_cmd.command, ["--dataset", DATASET])
    assert "warning: v0001 is registered but its folder is gone" in out.output


def test_gc_dry_run_then_delete(three: list[str], tmp_path: Path) -> None:
    runs = home.runs_dir(DATASET)
    for i in range(4):  # four runs of 1 MB each, a checkpoint in every one
        ckpt = runs / f"retrain-2026010{i + 1}T000000-abcd" / "unified" / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"\0" * 2**20)
    (home.engine_dir(DATASET) / "v0001").mkdir(parents=True)
    (home.engine_dir(DATASET) / "v0001" / "log.bin").write_bytes(b"\0" * 1000)
    leftover = home.versions_dir(DATASET) / ".staging-v0009-1-aaaaaa"
    leftover.mkdir()
    (leftover / "half.npy").write_bytes(b"\0" * 500)
    with catalogue.locked(DATASET), catalogue.connect(DATASET) as con:
        assert catalogue.reconcile(con, DATASET)["staging"] == [leftover.name]
    before = {p for p in home.home().rglob("*")}

    runner = CliRunner()
    args = ["--json", "gc.keep_versions=1", "gc.keep_runs=3", "gc.keep_checkpoints=1"]
    dry = runner.invoke(gc_cmd.command, ["--dataset", DATASET, "--dry-run", *args])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert {p for p in home.home().rglob("*")} == before  # a dry run deletes nothing
    deleted = {(d["kind"], d["name"]) for d in report["deletions"]}
    assert deleted == {
        ("staging", leftover.name),
        ("version", "v0001"),
        ("engine_state", "v0001"),
        ("run", "retrain-20260101T000000-abcd"),
        ("checkpoint", "runs/retrain-20260102T000000-abcd/unified/checkpoints/last.ckpt"),
        ("checkpoint", "runs/retrain-20260103T000000-abcd/unified/checkpoints/last.ckpt"),
    }
    v0001 = sum(p.stat().st_size for p in (home.versions_dir(DATASET) / "v0001").rglob("*") if p.is_file())
    assert report["bytes_freed"] == v0001 + 3 * 2**20 + 1000 + 500
    assert report["kept_versions"] == ["v0002", "v0003"]

    done = runner.invoke(gc_cmd.command, ["--dataset", DATASET, *args])
    assert done.exit_code == 0 and json.loads(done.stdout)["bytes_freed"] == report["bytes_freed"]
    assert catalogue.version_folders(DATASET) == ["v0002", "v0003"] and not leftover.exists()
    assert sorted(p.name for p in runs.iterdir()) == [f"retrain-2026010{i}T000000-abcd" for i in (2, 3, 4)]
    assert [p.parts[-4] for p in runs.rglob("*.ckpt")] == ["retrain-20260104T000000-abcd"]
    assert [v["version"] for v in catalogue.list_versions(DATASET, verify=True)] == ["v0002", "v0003"]
    assert catalogue.rollback(DATASET, "v0002") == "v0003"  # what was kept still serves
    with pytest.raises(catalogue.UnknownVersionError):
        catalogue.rollback(DATASET, "v0001")
    # the name of a deleted version is never reused, and a second gc has nothing left to do
    nxt = publication.publish_version(
        make_pieces(make_world(n_docs=120), tmp_path, seed=4), passing_gate(), {}, {}, "run-4", DATASET
    )
    assert nxt.version == "v0004"
    text = runner.invoke(gc_cmd.command, ["--dataset", DATASET, "--dry-run", "gc.keep_versions=5"])
    assert text.exit_code == 0 and "would delete 0 item(s), 0 bytes" in text.output


def test_gc_counts_hard_linked_files_once(ebr_home: Path, tmp_path: Path) -> None:
    """A promoted version's files are hard links to its run's candidate: deleting the run frees nothing."""
    world = make_world(n_docs=120)
    candidate = home.runs_dir(DATASET) / "retrain-20260101T000000-abcd" / "serving" / "candidate"
    publication.stage_version(make_pieces(world, tmp_path, seed=1), candidate, {}, {}, "run-1", {})
    publication.promote(candidate, passing_gate(), "run-1", DATASET)
    report = collect(GcConfig(keep_versions=1, keep_runs=0, keep_checkpoints=0), DATASET, dry_run=True)
    assert [d.kind for d in report.deletions] == ["run"]
    manifest = candidate / registry.MANIFEST  # the only file not shared with the version
    assert report.bytes_freed == manifest.stat().st_size
